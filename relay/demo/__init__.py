"""``relay demo``: a private PostgreSQL server, the example schema, a simulator and the demo
page's routes, handed to the relay's port through ``run_relay(extra_routes=...)``.

Imported only by the CLI; may import everything below it.
"""
