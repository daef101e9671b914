"""The PostgreSQL shell: every SQL statement the relay runs, the log reader, the sequencer, the
maintenance loop and the replay source, each kept alive by one supervised reconnect loop.

Reports through callbacks handed in by ``relay.app`` (it never writes the hub). May import
``relay.errors``, ``relay.core`` and ``relay.ops``; never ``relay.net``.
"""
