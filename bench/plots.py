"""The relay benchmark's plots: the latency CDF and the fan-out rate and CPU, as PNG files."""

from __future__ import annotations

from pathlib import Path

from bench.cells import fanout_cell, stack_label
from bench.plan import FANOUT_RATE, Results
from tests.support.paths import REPO

__all__ = ["write_plots"]


CDF_PLOT = "relay_latency_cdf.png"


FANOUT_PLOT = "relay_fanout.png"


def write_plots(results: Results, folder: Path) -> dict[str, Path]:
    """The latency CDF and the delivered rate against connected clients, as PNG files.
    Returns their paths relative to the repository (or absolute when outside it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    colours = {"relay": "tab:blue", "peer": "tab:orange", "bare": "tab:green"}

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    drew = False
    for key in ("relay", "peer"):
        stack = results.stacks[key]
        cells = sorted(
            {cell for cell in stack.latency if cell[1] == max(u for _, u in stack.latency)}
        )
        for (rate, users), style in zip(cells, ("-", "--", ":"), strict=False):
            values = sorted(v * 1e3 for run in stack.latency[(rate, users)] for v in run.latencies)
            values = [max(v, 1e-3) for v in values]
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot(values, ys, style, color=colours[key], linewidth=1.6,
                    label=f"{stack_label(key)}, {rate:,} events/s, {users:,} users")  # fmt: skip
            drew = True
    if drew:
        ax.set_xscale("log")
        ax.set_xlabel("latency, writing statement → client (ms, log scale)")
        ax.set_ylabel("fraction of events")
        ax.set_ylim(0, 1.005)
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("Commit-to-client latency (durable commits, all runs pooled)", fontsize=10)
        fig.tight_layout()
        paths["cdf"] = folder / CDF_PLOT
        fig.savefig(paths["cdf"])
    plt.close(fig)

    fig, (ax, ax_cpu) = plt.subplots(1, 2, figsize=(10, 4.3), dpi=110)
    drew = False
    all_conns: set[int] = set()
    styles = {"relay": ("o", "-"), "peer": ("s", "--"), "bare": ("^", ":")}
    for key in ("relay", "peer", "bare"):
        stack = results.stacks[key]
        if not stack.fanout:
            continue
        conns = sorted(stack.fanout)
        all_conns.update(conns)
        fan_cells = [fanout_cell(stack.fanout[c]) for c in conns]
        marker, line = styles[key]
        ax.plot(conns, [c["rate"] for c in fan_cells], marker=marker, linestyle=line,
                color=colours[key], label=stack_label(key), markersize=7, alpha=0.85)  # fmt: skip
        ax_cpu.plot(conns, [c["us"] for c in fan_cells], marker=marker, linestyle=line,
                    color=colours[key], label=stack_label(key), markersize=7)  # fmt: skip
        drew = True
    if drew:
        xs = sorted(all_conns)
        ax.plot(xs, [FANOUT_RATE * x for x in xs], "k:", linewidth=1,
                label=f"offered ({FANOUT_RATE:.0f}/s x N)")  # fmt: skip
        for axis in (ax, ax_cpu):
            axis.set_xscale("log")
            axis.set_xlabel("connected clients of the one user (log scale)")
            axis.grid(True, which="both", alpha=0.3)
        ax.set_yscale("log")
        ax.set_ylabel("deliveries per second received (log scale)")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title("Delivered rate against connected clients", fontsize=10)
        ax_cpu.set_ylabel("server CPU per delivery (µs)")
        ax_cpu.set_ylim(bottom=0)
        ax_cpu.legend(fontsize=8, loc="upper right")
        ax_cpu.set_title("Server CPU per delivery", fontsize=10)
        fig.suptitle(f"Fan-out, {FANOUT_RATE:.0f} events/s to one user; clients on the same "
                     "2 cores", fontsize=10)  # fmt: skip
        fig.tight_layout()
        paths["fanout"] = folder / FANOUT_PLOT
        fig.savefig(paths["fanout"])
    plt.close(fig)

    out: dict[str, Path] = {}
    for key, path in paths.items():
        try:
            out[key] = path.resolve().relative_to(REPO)
        except ValueError:
            out[key] = Path(path.name)  # a temporary folder: never name a machine's path
    return out
