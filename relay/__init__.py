"""pgrelay: a realtime relay for PostgreSQL.

Triggers capture row changes into a durable, gap-free log (``sql/``); this package tails the
log and forwards each change, over websockets, only to the users allowed to see it.
"""

__version__ = "0.1.0"
