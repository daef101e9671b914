"""The pure core: what pgrelay promises, as values and state machines, with no I/O.

Events, cursors, filters, subscriptions (one ``delivery(event, keys)`` match, with move-outs and
entries decided in ``moves``), the router, the outbound queue, the v1 session, client requests,
the wire (every v1 frame, encoded once) and its SSE framing, the catch-up stepper, the log's state
and its one resume rule, the inbound budget, admission, authentication, stream tickets and
backoff. Time is an argument and randomness is injected; nothing here awaits, opens a socket or a
file, or logs. Modules here import only ``relay.errors``, each other and the standard library
(plus PyJWT for token checks): never anyio, psycopg, websockets, prometheus_client or structlog
(checked by import-linter in ``make lint``).
"""
