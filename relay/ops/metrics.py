"""Prometheus metrics. Labels stay bounded: never a user id, a cursor or a connection id.

One ``Metrics`` per relay process, on its own registry (tests run several in one interpreter).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["LAG_BUCKETS", "Metrics"]

# Commit-to-socket lag: the interesting range is 1 ms to a few seconds.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Connections(Collector):
    """relay_connections (gauge) beside relay_connections_total (counter), both by transport:
    ``websocket``, ``sse`` (streams) and ``long_poll`` (requests in flight; ``polls``); and
    relay_websockets, the open websockets by dialect (``v1``, ``supabase``).

    prometheus-client's own classes refuse that pair in one registry (the counter claims the
    bare name too), although the text exposition format has no conflict. The gauge's sum over
    transports is what RELAY_MAX_CONNECTIONS bounds.
    """

    TRANSPORTS = ("websocket", "sse", "long_poll")

    def __init__(self) -> None:
        self.open = dict.fromkeys(self.TRANSPORTS, 0)
        self.accepted = dict.fromkeys(self.TRANSPORTS, 0)
        self.polls: Callable[[], int] = lambda: 0
        self.dialects: dict[str, int] = {"v1": 0, "supabase": 0}  # open websockets by dialect

    def opened(self, transport: str, dialect: str = "v1") -> None:
        self.open[transport] += 1
        self.accepted[transport] += 1
        if transport == "websocket":
            self.dialects[dialect] = self.dialects.get(dialect, 0) + 1

    def closed(self, transport: str, dialect: str = "v1") -> None:
        self.open[transport] -= 1
        if transport == "websocket":
            self.dialects[dialect] -= 1

    def polled(self) -> None:
        """A long-poll request was admitted (those in flight are counted by ``polls``)."""
        self.accepted["long_poll"] += 1

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "relay_connections",
            "Open connections by transport, long-polls in flight included (their sum is bounded "
            "by max_connections)",
            labels=["transport"],
        )
        counter = CounterMetricFamily(
            "relay_connections", "Connections accepted by transport", labels=["transport"]
        )
        for transport in self.TRANSPORTS:
            open_now = self.polls() if transport == "long_poll" else self.open[transport]
            gauge.add_metric([transport], open_now)
            counter.add_metric([transport], self.accepted[transport])
        websockets = GaugeMetricFamily(
            "relay_websockets", "Open websocket connections, by dialect", labels=["dialect"]
        )
        for dialect, count in sorted(self.dialects.items()):
            websockets.add_metric([dialect], count)
        yield gauge
        yield websockets
        yield counter


class WeightedHistogram(Collector):
    """A histogram whose observe takes a count: the lag of one event fanned out to n sockets is
    one call, not n (prometheus-client's Histogram costs a lock and a bisect per call)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [*buckets, float("inf")]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.sum += value * count

    def collect(self) -> Iterator[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.last_event_age = Gauge(
            "relay_last_event_age_seconds",
            "Seconds since the newest event (heartbeats included) reached the relay",
            registry=registry,
        )
        self.listener_up = Gauge(
            "relay_listener_up", "1 while the log reader's connection is up", registry=registry
        )
        self.listener_reconnects = Counter(
            "relay_listener_reconnects",
            "Log reader connections lost and retried",
            registry=registry,
        )
        self.events = Counter(
            "relay_events", "Row events read from the log", ["table", "op"], registry=registry
        )
        self.uncarriable = Counter(
            "relay_events_unencodable",
            "Events whose row could not be carried as JSON (sent truncated), by reason",
            ["reason"],
            registry=registry,
        )
        self.deliveries = Counter(
            "relay_deliveries", "Event frames written to client sockets", registry=registry
        )
        self.drops = Counter(
            "relay_drops", "Events not delivered, by reason", ["reason"], registry=registry
        )
        self.resets = Counter(
            "relay_resets", "Reset frames sent to clients, by reason", ["reason"], registry=registry
        )
        self.connections = _Connections()
        registry.register(self.connections)
        self.auth_failures = Counter(
            "relay_auth_failures", "Refused tokens, by reason", ["reason"], registry=registry
        )
        self.refused = Counter(
            "relay_handshakes_refused",
            "Handshakes refused before the websocket opened, by reason",
            ["reason"],
            registry=registry,
        )
        self.handshakes_in_progress = Gauge(
            "relay_handshakes_in_progress",
            "Sockets accepted on the main port whose HTTP request is not complete yet",
            registry=registry,
        )
        self.client_limits = Counter(
            "relay_client_limits",
            "Subscribes refused (filter_bytes) and connections closed (inbound_rate) at a "
            "per-connection limit",
            ["limit"],
            registry=registry,
        )
        self.delivery_lag = WeightedHistogram(
            "relay_delivery_lag_seconds",
            "Commit of the change to the write of its frame to a client socket",
            LAG_BUCKETS,
        )
        registry.register(self.delivery_lag)
        self.log_backlog = Gauge(
            "relay_log_backlog",
            "Events committed to the log but not yet routed by this relay",
            registry=registry,
        )
        self.sequencer_leader = Gauge(
            "relay_sequencer_leader",
            "1 while this replica holds the sequencer role",
            registry=registry,
        )
        reader_batches = Counter(
            "relay_reader_batches",
            "Batches the log reader delivered, by source: log (read from relay.log) or handoff "
            "(the leader's own, handed by its sequencer without a query)",
            ["source"],
            registry=registry,
        )
        self._reader_batches = {s: reader_batches.labels(s) for s in ("log", "handoff")}

    def count_reader_batch(self, source: str) -> None:
        """One batch delivered by the log reader, read from the log or handed over."""
        self._reader_batches[source].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
