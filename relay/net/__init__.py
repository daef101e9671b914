"""The network shell: the hub every connection shares, the connection (the router's target) and
its two transports, the websocket and the SSE stream, the long-poll, the sockets' bounds from
accept on, and the HTTP routes of the relay's port with their public helpers.

May import ``relay.errors``, ``relay.core`` and ``relay.ops``; never ``relay.pg``: it reads the
log through what ``relay.app`` hands it.
"""
