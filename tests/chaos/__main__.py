"""The two load processes of a chaos run, started by tests.chaos.cluster.ChaosRun:

python -m tests.chaos writer CONFIG   # tests.chaos.writer
python -m tests.chaos swarm CONFIG    # tests.chaos.swarm
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from tests.chaos.swarm import ClientSpec, SwarmConfig, run_swarm
from tests.chaos.writer import WriterConfig, run_writer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("role", choices=["writer", "swarm"])
    parser.add_argument("config")
    args = parser.parse_args(argv)
    raw = json.loads(Path(args.config).read_text())
    if args.role == "writer":
        run_writer(WriterConfig(**raw))
    else:
        raw["clients"] = [ClientSpec(**spec) for spec in raw["clients"]]
        asyncio.run(run_swarm(SwarmConfig(**raw)))


if __name__ == "__main__":
    main()
