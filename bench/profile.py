"""The relay's hot path under py-spy: a recording while a measurement runs, and its summary
(shares of the samples by function, self and inclusive) for the report's profile section."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["profiling", "summarize_profile"]


@contextlib.contextmanager
def profiling(
    pid: int, seconds: float, out: Path, into: dict[str, Any], name: str, rate: int = 250
) -> Iterator[None]:
    """Records `pid` with py-spy (`rate` samples/s, for `seconds` + 1) while the block runs, into
    the raw file `out`; its summary goes to into[name] (py-spy's error instead, when it wrote
    nothing). Without py-spy installed, the block runs unprofiled."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        yield
        return
    proc = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(int(seconds) + 1), "-r", str(rate),
         "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(0.5)
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists():
            into[name] = summarize_profile(out.read_text())
        else:
            assert proc.stderr is not None
            into[name] = {"error": proc.stderr.read().decode()[-300:]}


def summarize_profile(raw: str) -> dict[str, Any]:
    """py-spy's collapsed stacks as shares of the samples: by function (self) and inclusive."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in set(frames):
            incl[name] = incl.get(name, 0) + count
    top_self = sorted(own.items(), key=lambda kv: -kv[1])[:12]
    watch = ("LogReader._read_all", "event_from_row", "Hub.deliver", "Router.route",
             "Subscription.delivery", "Connection.offer", "Connection._can_write_now",
             "V1.event_frame", "_SelectorSocketTransport.write", "Hub.delivered",
             "Sequencer._serve", "AsyncConnection.notifies", "WebsocketShell.sweep",
             "Connection.check", "Session.tick", "Connection.keepalive")  # fmt: skip
    return {
        "samples": total,
        "self": [(name, count / total) for name, count in top_self] if total else [],
        "inclusive": {name: incl.get(name, 0) / total for name in watch} if total else {},
    }


def _function(frame: str) -> str:
    """'Router.route (relay/core/router.py:201)' -> 'Router.route'."""
    return frame.split(" (", 1)[0]
