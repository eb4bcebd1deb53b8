"""``tapengine bench --plot``: throughput against frame size per path, TCP per path, and the
sink's latency distribution. matplotlib is an optional extra (``pip install 'tapengine[plot]'``)
imported only here, only when a plot is asked for, with the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapengine.benchrun import FRAME_PATHS, TCP_PATHS, BenchReport, machine
from tapengine.traffic import parse_size

COLORS = {"engine": "tab:blue", "readv": "tab:purple", "kernel": "tab:green",
          "naive": "tab:red", "veth": "tab:gray", "bridge": "tab:green"}
LABELS = {"engine": "tapengine wire", "readv": "tapengine wire, readv/writev",
          "kernel": "kernel veth pair", "naive": "naive Python",
          "veth": "veth pair (no forwarder)", "bridge": "kernel bridge"}


class PlotUnavailableError(RuntimeError):
    pass


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailableError(
            "--plot needs matplotlib, which is not installed: pip install 'tapengine[plot]' "
            "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: BenchReport, out: Path | str) -> None:
    """Write a PNG of ``report`` to ``out``."""
    plt = require_matplotlib()
    frames = [s for s in report.scenarios if s.kind == "frames"]
    tcp = [s for s in report.scenarios if s.kind == "tcp"]
    panels = ["pps", "gbit"] if frames else []
    panels += ["tcp"] if tcp else []
    panels += ["latency"] if any(s.latency for s in frames) else []
    if not panels:
        raise ValueError("nothing to plot: the report has no scenario")
    rows, columns = (2, 2) if len(panels) > 2 else (1, len(panels))
    fig, grid = plt.subplots(rows, columns, figsize=(5.6 * columns, 4.2 * rows), squeeze=False)
    cells = list(grid.flat)
    for unused in cells[len(panels):]:
        unused.set_visible(False)
    axes = dict(zip(panels, cells, strict=False))
    xs = {size: k for k, size in enumerate(report.sizes)}
    ticks = [f"{size}\n(mean {parse_size(size).mean():.0f})" if size == "imix" else size
             for size in report.sizes]
    for panel, scale, unit in (("pps", 1e6, "Mpps delivered"), ("gbit", 1e9, "Gbit/s delivered")):
        if panel not in axes:
            continue
        ax = axes[panel]
        for path in FRAME_PATHS:
            rows = sorted((s for s in frames if s.path == path), key=lambda s: xs[s.size])
            if not rows:
                continue
            x = [xs[s.size] for s in rows]
            if panel == "pps":
                y = [s.median_pps / scale for s in rows]
                low = [(s.median_pps - s.spread_pps[0]) / scale for s in rows]
                high = [(s.spread_pps[1] - s.median_pps) / scale for s in rows]
            else:
                y = [s.median_bits_per_s / scale for s in rows]
                low = [(s.median_bits_per_s - s.spread_bits_per_s[0]) / scale for s in rows]
                high = [(s.spread_bits_per_s[1] - s.median_bits_per_s) / scale for s in rows]
            ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, color=COLORS[path],
                        label=LABELS[path])
        ax.set_xticks(range(len(report.sizes)), ticks)
        ax.set_xlabel("frame size (bytes, with FCS)")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        load = "flat out" if report.rate == "max" else f"at {report.rate}"
        ax.set_title(f"generator -> path -> sink, {load}" if panel == "pps" else
                     "same runs, bit rate")
        ax.legend(fontsize=8)
    if "tcp" in axes:
        ax = axes["tcp"]
        rows = sorted(tcp, key=lambda s: TCP_PATHS.index(s.path))
        x = range(len(rows))
        y = [s.median_bits_per_s / 1e9 for s in rows]
        err = [[(s.median_bits_per_s - s.spread_bits_per_s[0]) / 1e9 for s in rows],
               [(s.spread_bits_per_s[1] - s.median_bits_per_s) / 1e9 for s in rows]]
        ax.bar(x, y, yerr=err, capsize=4, color=[COLORS[s.path] for s in rows])
        labels = [LABELS[s.path].replace(" (", "\n(").replace(", ", ",\n").replace("tapengine ",
                  "tapengine\n", 1) for s in rows]
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_ylabel("Gbit/s (iperf3 goodput)")
        ax.set_title("TCP, one iperf3 stream")
        ax.grid(alpha=0.3, axis="y")
    if "latency" in axes:
        ax = axes["latency"]
        size = "64" if "64" in report.sizes else report.sizes[0]
        for s in frames:
            if s.size != size or not s.latency:
                continue
            total = sum(n for _, n in s.latency)
            cumulative, ys = 0, []
            for _, n in s.latency:
                cumulative += n
                ys.append(cumulative / total)
            ax.step([ns / 1e3 for ns, _ in s.latency], ys, where="post", color=COLORS[s.path],
                    label=LABELS[s.path])
        ax.set_xscale("log")
        ax.set_xlabel("one-way latency (µs, log)")
        ax.set_ylabel("fraction of frames")
        load = "flat out" if report.rate == "max" else f"at {report.rate}"
        ax.set_title(f"latency CDF, {size}-byte frames {load}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"tapengine bench: medians of {report.rounds} interleaved rounds, "
                 f"bars = min..max; {machine()}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
