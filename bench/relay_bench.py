"""The relay against the physical limits and a peer, side by side in one run.

One run on one machine: a private PostgreSQL server (durable commits), the relay (`relay serve`),
the peer (encode/broadcaster's Postgres backend with Starlette websockets under uvicorn), a bare
websockets server (websockets' ``broadcast()``), the load generator (bench/loadgen.py) and a
client swarm (bench/swarm.py, two processes), all separate processes on 127.0.0.1.

Measured, for the relay and the peer alike: commit-to-client latency (stamped by the writing
statement with ``clock_timestamp()``, read by the client on the same clock) at 200, 1,000 and
4,500 events/s over 100 and 1,000 users; the highest rate sustained for 20 s with p99 under 1 s
and nothing lost; fan-out of 20 events/s to one user with 100, 1,000 and 10,000 connections
(deliveries/s, server CPU per delivery); RSS per idle connection at 1,000 and 10,000 with
browser-like clients (they offer permessage-deflate); 1,000 clients connecting at once; what
happens when the server's database listener is killed. Against the limits: PostgreSQL's own
INSERT/UPDATE rate on an untracked table, one psycopg listener's raw NOTIFY receive rate, and
websockets' raw ``broadcast()`` to the same clients.

    python -m bench.relay_bench [--quick] [--out BENCHMARKS.md] [--plots DIR] [--no-profile]
    python -m bench.relay_bench --only latency [--rates 1000,4500] [--users 100,1000]
                                [--repeats N] [--no-peer] [--relay-env NAME=VALUE] [--json FILE]

Writes its Markdown region (between the relay-bench markers) into --out, leaving the rest of
the file as it is; progress goes to stderr. --quick (under a minute) is the smoke mode of the
test suite: tiny runs, every section present, numbers meaningless. --only latency measures the
commit-to-client latency cells alone (the full plan's, or those chosen) and prints a summary
table instead of the region (medians per cell, the relay's CPU per event, the load average): for
A/B comparisons of one change; it writes no report (--json keeps the runs, and the py-spy
profile of the first run at 1,000 events/s over 1,000 users unless --no-profile).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cells import latency_summary
from bench.machine import machine_info
from bench.measure import Measure
from bench.plan import (
    FANOUT_USER,
    FULL,
    QUICK,
    LatencyRun,
    Plan,
    Results,
    StackResult,
    per_commit_for,
)
from bench.plots import write_plots
from bench.procs import (
    BareServer,
    PeerServer,
    RelayServer,
    SwarmGroup,
    log,
)
from bench.report import render, replace_region
from tests.support.paths import REPO
from tests.support.processes import cpu_seconds, rss_bytes

__all__ = ["Bench", "main"]


@dataclass
class Stack:
    """One server under test, its clients, and where its results go."""

    server: Any
    dsn: str | None  # its database: None for the bare server (it makes its own events)
    result: StackResult
    swarm: SwarmGroup
    calm: int  # handshakes at a time outside the storms


# -- the schedule --------------------------------------------------------------------------


class Bench(Measure):
    """The whole run: the limits, then each stack's cells, alternating between the stacks."""

    relay_env: dict[str, str] = {}  # settings for the relay process (replaced, never changed)

    def run_stacks(self, stacks: list[Stack]) -> None:
        """Measures the stacks side by side: each cell's runs alternate between them, so a
        neighbour's load on the shared machine falls on both alike."""
        plan = self.plan
        users = [str(u) for u in range(max(plan.memory_conns))]
        for st in stacks:  # each on its fresh server, the others idle with no clients
            self._memory_and_storm(st.server, st.swarm, st.result, users, st.calm)
            st.swarm.close()
        with_db = [st for st in stacks if st.dsn is not None]
        for n_users in sorted(plan.lat_users, reverse=True):
            self._connect_users(with_db, users[:n_users])
            self._latency(with_db, n_users)
            for st in with_db:
                self._sustained(st.server, st.swarm, st.dsn or "", st.result, n_users)
        for st in stacks:
            st.swarm.close()
        for st in stacks:
            self._fanout(st.server, st.swarm, st.dsn, st.result)
            st.swarm.close()
        for st in with_db:  # last: the peer does not recover from it
            self.kill_run(st.server, st.swarm, st.dsn or "", st.result, users[:100], st.calm)

    def _connect_users(self, stacks: list[Stack], users: list[str]) -> None:
        for st in stacks:
            st.swarm.close()
            answer = st.swarm.connect(st.server.kind, st.server.url, users,
                                      concurrency=st.calm, retries=3)  # fmt: skip
            log(f"{st.server.kind}: {answer['connected']} clients for the latency runs")

    def _memory_and_storm(
        self, server: Any, swarm: SwarmGroup, result: StackResult, users: list[str], calm: int
    ) -> None:
        plan = self.plan
        kind = server.kind
        # Warm-up: code paths loaded, first allocations made; then the baseline.
        swarm.connect(kind, server.url, [f"w{i}" for i in range(20)], concurrency=1)
        swarm.close()
        time.sleep(plan.settle)
        base = rss_bytes(server.pid)
        connected = 0
        for index, count in enumerate(sorted(plan.memory_conns)):
            batch = users[connected:count]
            if index == 0:  # the first population connects all at once: the storm
                answer = swarm.connect(
                    kind, server.url, batch[: plan.storm], concurrency=plan.storm, retries=3
                )
                result.storms.append(answer)
                log(f"{kind}: storm of {plan.storm}: {answer['seconds']:.2f} s, "
                    f"{answer['failed']} failed {answer['errors']}")  # fmt: skip
                batch = batch[plan.storm :]
            if batch:
                answer = swarm.connect(kind, server.url, batch, concurrency=calm, retries=3)
            connected = count
            time.sleep(plan.settle)
            rss = rss_bytes(server.pid)
            result.rss_per_conn[count] = (rss - base) / count
            profile = self.do_profile and kind == "relay" and count == max(plan.memory_conns)
            with self.profiled(server.pid, 1.5 * plan.settle, profile, "idle", rate=1000):
                cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
                time.sleep(1.5 * plan.settle)
            result.idle_cpu[count] = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
            log(f"{kind}: {count} idle connections, "
                f"{result.rss_per_conn[count] / 1000:.1f} kB each, "
                f"idle CPU {result.idle_cpu[count]:.3f} cores")  # fmt: skip
        # More storms on the warm server: the median of all of them is reported. (No retries:
        # the clients are closed right after.)
        for _ in range(plan.storm_repeats - 1):
            swarm.close()
            time.sleep(1.0)
            answer = swarm.connect(kind, server.url, users[: plan.storm], concurrency=plan.storm)
            result.storms.append(answer)
            log(f"{kind}: storm of {plan.storm}: {answer['seconds']:.2f} s, "
                f"{answer['failed']} failed {answer['errors']}")  # fmt: skip

    def _latency(self, stacks: list[Stack], n_users: int) -> None:
        plan = self.plan
        for repeat in range(plan.repeats):
            for rate in plan.lat_rates:
                for st in stacks:
                    name = st.result.name
                    profile = (
                        self.do_profile and name == "relay" and repeat == 0
                        and (rate, n_users) == (1000, 1000)
                    )  # fmt: skip
                    with self.profiled(st.server.pid, plan.lat_seconds + 1, profile, "latency"):
                        run = self.latency_run(
                            st.swarm, st.dsn or "", rate=rate, users=n_users,
                            seconds=plan.lat_seconds, per_commit=per_commit_for(rate),
                            server_pid=st.server.pid, path=name == "relay",
                        )  # fmt: skip
                    st.result.latency.setdefault((rate, n_users), []).append(run)
                    log(f"{name}: {rate}/s over {n_users} users: p50 {run.p50 * 1e3:.2f} "
                        f"p99 {run.p99 * 1e3:.2f} max {run.max * 1e3:.1f} ms, "
                        f"{run.distinct}/{run.committed} delivered, rate {run.rate:.0f}, "
                        f"others {run.others:.2f}")  # fmt: skip

    def _sustained(
        self, server: Any, swarm: SwarmGroup, dsn: str, result: StackResult, n_users: int
    ) -> None:
        """A ladder: up while a step passes, down while it fails; stops at the first change
        of direction, or after sustain_steps steps."""
        plan = self.plan
        ladder = plan.sustain_ladder
        index = plan.sustain_start
        steps: list[tuple[int, LatencyRun, bool]] = []
        direction = 0
        for _ in range(plan.sustain_steps):
            rate = ladder[index]
            run = self.latency_run(
                swarm, dsn, rate=rate, users=n_users, seconds=plan.sustain_seconds,
                per_commit=plan.sustain_per_commit, server_pid=server.pid,
            )  # fmt: skip
            run.latencies = []
            ok = run.kept_rate and run.lost == 0 and run.duplicates == 0 and run.p99 < 1.0
            steps.append((rate, run, ok))
            log(f"{result.name}: sustain {rate}/s over {n_users} users: "
                f"{'pass' if ok else 'fail'} (rate {run.rate:.0f}, lost {run.lost}, "
                f"p99 {run.p99 * 1e3:.1f} ms)")  # fmt: skip
            step = 1 if ok else -1
            if direction and step != direction:
                break
            direction = step
            index += step
            if not 0 <= index < len(ladder):
                break
        result.sustained[n_users] = steps

    def _fanout(self, server: Any, swarm: SwarmGroup, dsn: str | None, result: StackResult) -> None:
        plan = self.plan
        kind = server.kind
        for conns in plan.fanout_conns:
            swarm.close()
            time.sleep(0.5)
            # The first subscribe alone: on the peer it LISTENs, the others only join it.
            swarm.connect(kind, server.url, [FANOUT_USER], concurrency=1)
            swarm.connect(kind, server.url, [FANOUT_USER] * (conns - 1), concurrency=200,
                          retries=3)  # fmt: skip
            profile = self.do_profile and kind == "relay" and conns == 1000
            for repeat in range(plan.repeats):
                with self.profiled(server.pid, plan.fanout_seconds(conns) + 2,
                                     profile and repeat == 0, "fanout"):  # fmt: skip
                    run = self.fanout_run(swarm, server, dsn, conns, plan.fanout_seconds(conns))
                result.fanout.setdefault(conns, []).append(run)
                log(f"{result.name}: fan-out to {conns}: {run.rate:,.0f} deliveries/s, "
                    f"{run.us_per_delivery:.1f} us CPU each, {run.deliveries}/{run.expected}, "
                    f"others {run.others:.2f}")  # fmt: skip

    def _dialect_latency(self, server: RelayServer, dsn: str, result: StackResult) -> None:
        """The latency cells at the most users again, through the Supabase dialect
        (docs/supabase.md): the same relay process, realtime-js's frames."""
        plan = self.plan
        n_users = max(plan.lat_users)
        swarm = SwarmGroup(2)
        try:
            users = [str(u) for u in range(n_users)]
            answer = swarm.connect("supabase", server.supabase_url, users, concurrency=200,
                                   retries=3)  # fmt: skip
            log(f"supabase dialect: {answer['connected']} clients for the latency runs")
            for _ in range(plan.repeats):
                for rate in plan.lat_rates:
                    run = self.latency_run(
                        swarm, dsn, rate=rate, users=n_users, seconds=plan.lat_seconds,
                        per_commit=per_commit_for(rate), server_pid=server.pid,
                    )  # fmt: skip
                    result.latency.setdefault((rate, n_users), []).append(run)
                    log(f"relay (supabase): {rate}/s over {n_users} users: p50 "
                        f"{run.p50 * 1e3:.2f} p99 {run.p99 * 1e3:.2f} ms, "
                        f"{run.distinct}/{run.committed} delivered")  # fmt: skip
        finally:
            swarm.stop()

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> Results:
        results = self.results
        results.machine = machine_info()
        self.db.start()
        try:
            results.machine["postgres"] = self.db.version()
            log("limits")
            self.measure_limits()
            relay = StackResult("relay")
            dialect = StackResult("relay-supabase")
            results.stacks["relay-supabase"] = dialect
            peer = StackResult("peer")
            bare = StackResult("bare websockets")
            results.stacks.update(relay=relay, peer=peer, bare=bare)
            self.relay_base = self.db.pipeline()[1]
            with self._db_stacks(relay, peer) as stacks:
                self.run_stacks(stacks)
                self._dialect_latency(stacks[0].server, self.db.dsn("relay"), dialect)
            with contextlib.ExitStack() as stack:
                bare_server = BareServer().start()
                stack.callback(bare_server.stop)
                swarm = SwarmGroup(2)
                stack.callback(swarm.stop)
                self.run_stacks([Stack(bare_server, None, bare, swarm, 200)])
        finally:
            self.db.stop()
        results.seconds = time.time() - results.started
        return results

    def run_latency(self, *, peer: bool) -> Results:
        """Only the latency cells of the plan: the relay (and the peer) on one database server,
        alternating run by run."""
        results = self.results
        results.machine = machine_info()
        results.machine["load average before"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        self.db.start()
        try:
            relay, peer_result = StackResult("relay"), StackResult("peer")
            results.stacks.update(relay=relay, peer=peer_result)
            if not peer:
                peer_result.available, peer_result.why_not = False, "--no-peer"
            self.relay_base = self.db.pipeline()[1]
            with self._db_stacks(relay, peer_result) as stacks:
                users = [str(u) for u in range(max(self.plan.lat_users))]
                for n_users in sorted(self.plan.lat_users, reverse=True):
                    self._connect_users(stacks, users[:n_users])
                    self._latency(stacks, n_users)
        finally:
            self.db.stop()
        results.machine["load average after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        results.seconds = time.time() - results.started
        return results

    @contextlib.contextmanager
    def _db_stacks(self, relay: StackResult, peer: StackResult) -> Iterator[list[Stack]]:
        """The relay's server and, when it is installed (and ``peer.available``), the peer's,
        each with its swarm; stopped on exit."""
        missing = [m for m in ("broadcaster", "starlette", "uvicorn", "asyncpg")
                   if importlib.util.find_spec(m) is None]  # fmt: skip
        if missing and peer.available:
            peer.available = False
            peer.why_not = f"not installed here: {', '.join(missing)}"
            log(f"peer skipped: {peer.why_not}")
        with contextlib.ExitStack() as stack:
            relay_server = RelayServer(self.db.dsn("relay"), self.relay_env).start()
            stack.callback(relay_server.stop)
            self.servers[relay_server.pid] = relay_server
            stacks = [Stack(relay_server, self.db.dsn("relay"), relay, SwarmGroup(2), 200)]
            stack.callback(stacks[0].swarm.stop)
            if peer.available:
                peer_server = PeerServer(self.db.dsn("peer"), self.workdir / "peer.log")
                peer_server.start()
                stack.callback(peer_server.stop)
                stack.callback(lambda: peer.errors.update(peer_server.errors()))
                # Subscribing is serial on the peer: broadcaster's one asyncpg connection
                # refuses a second LISTEN while one is in flight (see the storms).
                stacks.append(Stack(peer_server, self.db.dsn("peer"), peer, SwarmGroup(2), 1))
                stack.callback(stacks[-1].swarm.stop)
            yield stacks
        self.servers.clear()


# -- the report ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: under a minute")
    parser.add_argument("--out", type=Path, help="write the region into this Markdown file")
    parser.add_argument("--plots", type=Path, help="folder for the PNG plots (default: bench/)")
    parser.add_argument("--json", type=Path, help="also dump the raw results here")
    parser.add_argument("--save", type=Path, help="keep the results (pickle) to --render later")
    parser.add_argument("--render", type=Path, help="measure nothing: report saved results")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--only", choices=("latency",), help="measure only these cells, no report")
    parser.add_argument("--rates", help="with --only: events/s, comma-separated (plan's if unset)")
    parser.add_argument("--users", help="with --only: users, comma-separated (plan's if unset)")
    parser.add_argument("--repeats", type=int, help="with --only: runs per cell (plan's if unset)")
    parser.add_argument("--no-peer", action="store_true", help="with --only: the relay alone")
    parser.add_argument(
        "--relay-env", action="append", default=[], metavar="NAME=VALUE",
        help="with --only: a setting for the relay (RELAY_EVENT_LOOP=uvloop)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.only:
        return latency_only(plan, args)
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workdir = Path(tmp)
        if args.render:
            results = pickle.loads(args.render.read_bytes())
        else:
            bench = Bench(plan, workdir, profile=not args.no_profile and not args.quick)
            results = bench.run()
        if args.save:
            args.save.write_bytes(pickle.dumps(results))
        plots_dir = args.plots or (workdir if args.quick else REPO / "bench")
        plots = write_plots(results, plots_dir)
        if args.json:
            args.json.write_text(json.dumps(results_to_json(results), indent=1))
        region = render(results, plan, quick=args.quick, plots=plots)
    sys.stdout.write(region + "\n")
    if args.out:
        replace_region(args.out, region)
        log(f"wrote {args.out}")
    return 0


def latency_only(plan: Plan, args: argparse.Namespace) -> int:
    """--only latency: the chosen latency cells, a summary table on stdout (and --json)."""
    plan = dataclasses.replace(
        plan,
        lat_rates=tuple(int(r) for r in args.rates.split(",")) if args.rates else plan.lat_rates,
        lat_users=tuple(int(u) for u in args.users.split(",")) if args.users else plan.lat_users,
        repeats=args.repeats or plan.repeats,
    )
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        bench = Bench(plan, Path(tmp), profile=not args.no_profile and not args.quick)
        bench.relay_env = dict(item.split("=", 1) for item in args.relay_env)
        results = bench.run_latency(peer=not args.no_peer)
    if args.json:
        args.json.write_text(json.dumps(results_to_json(results), indent=1))
    sys.stdout.write(latency_summary(results) + "\n")
    return 0


def results_to_json(results: Results) -> dict[str, Any]:
    def enc(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return {k: enc(v) for k, v in vars(value).items() if k != "latencies"}
        if isinstance(value, dict):
            return {str(k): enc(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [enc(v) for v in value]
        return value

    out: dict[str, Any] = enc(results)
    return out


if __name__ == "__main__":
    sys.exit(main())
