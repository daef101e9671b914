"""Operations: settings from ``RELAY_*`` and flags, Prometheus metrics, JSON logs, token keys,
data files shipped with the package (the SQL scripts), and the heap policy.

May import ``relay.errors`` and ``relay.core``; never the Postgres or network shells.
"""
