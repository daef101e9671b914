"""Helpers shared by the test suite, the chaos harness (tests/chaos) and the benchmarks (bench/).

What lives here: a relay in a child process and the per-process counters around it
(``processes``), test tokens (``tokens``), websocket and long-poll clients (``clients``),
waiting for a condition (``waiting``), headless Chromium (``browser``), Node tools
(``node``), builders of events and subscriptions (``factories``),
percentiles (``stats``), test databases (``databases``) and the repository's paths
(``paths``). Fixtures stay in tests/conftest.py. These modules may import relay and
third-party libraries; they never import test modules, tests.chaos or bench.
"""
