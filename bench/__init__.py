"""The benchmarks (make bench): bench/write_overhead.py measures what capture costs a writer,
bench/relay_bench.py the relay against the physical limits and a peer; BENCHMARKS.md holds their
reports. Their processes (the swarm, the load generator, the peer, the bare websockets server) are
modules here too. These modules may import relay and tests.support, nothing else of the tests.
"""
