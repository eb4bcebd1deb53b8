"""Do larger queues reduce drops through ``tapengine forward``? txqueuelen and TUNSETSNDBUF.

For each setup (``compare_offload.py`` syntax, e.g. ``no-offload+--txqueuelen=5000``), in
interleaved rounds:

- TCP: iperf3, one stream; its retransmits and A's tap ``tx_dropped`` during the run;
- then frames: trafgen sends 60-byte frames flat out from A for a few seconds; the kernel counts
  what A's tap offered (``tx_packets + tx_dropped``), what it dropped before the engine read it
  (``tx_dropped``: the tap's queue toward our fd was full) and what B's tap received.

    .venv/bin/python bench/queue_sizes.py --rounds 3 --setups no-offload+--txqueuelen=0,\
        no-offload+--txqueuelen=5000,offload+--txqueuelen=0,offload+--txqueuelen=5000

(``tapengine forward`` raises the txqueuelen to 5000 by default; ``--txqueuelen=0`` runs
``bench/lever_forward.py``, which leaves the device at the kernel's 1000.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_forward import small_frame_rate
from compare_offload import iperf, parse, topology
from tapengine.kstats import read_stats


def measure(setup: str, seconds: float, tcp_seconds: float) -> dict[str, float]:
    result: dict[str, float] = {}
    with topology(setup, None) as (a, b):
        # TCP first: trafgen's worker can outlive its SIGINT by seconds under load.
        before = read_stats(a.ifname, a.netns)
        tcp = iperf(a, b, tcp_seconds, parse(setup)[2])
        after = read_stats(a.ifname, a.netns)
        result["tcp_bps"] = tcp["bps"]
        result["tcp_retransmits"] = tcp["retransmits"]
        result["tcp_tap_dropped"] = float(after.tx_dropped - before.tx_dropped)
        if not seconds:
            return result
        before = read_stats(a.ifname, a.netns)
        received, offered, _ = small_frame_rate(a, b, seconds, "raw")
        after = read_stats(a.ifname, a.netns)
        result["frames_rx"] = received
        result["frames_offered"] = offered
        result["frames_lost"] = 1 - received / offered if offered else 0.0
        result["tap_dropped"] = float(after.tx_dropped - before.tx_dropped)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="frames per run (0: TCP only)")
    parser.add_argument("--tcp-seconds", type=float, default=5.0)
    parser.add_argument("--setups",
                        default="no-offload+--txqueuelen=0,no-offload+--txqueuelen=5000")
    args = parser.parse_args()
    setups = args.setups.split(",")
    runs: dict[str, list[dict[str, float]]] = {setup: [] for setup in setups}
    for round_ in range(args.rounds):
        order = setups[round_ % len(setups):] + setups[:round_ % len(setups)]
        for setup in order:
            result = measure(setup, args.seconds, args.tcp_seconds)
            runs[setup].append(result)
            print(f"round {round_ + 1} {setup:<36} " + "  ".join(
                f"{k} {v:,.3f}" if k == "frames_lost" else f"{k} {v:,.0f}"
                for k, v in result.items()), file=sys.stderr, flush=True)
    print(f"\n{args.rounds} interleaved rounds; frames: trafgen 60 B flat out {args.seconds:g} s; "
          f"TCP: iperf3 one stream {args.tcp_seconds:g} s; medians (every run)\n")
    keys = list(runs[setups[0]][0])
    print("| setup | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for setup in setups:
        cells = []
        for key in keys:
            values = [run[key] for run in runs[setup]]
            med = statistics.median(values)
            if key == "frames_lost":
                cells.append(f"**{med:.1%}** (" + ", ".join(f"{v:.1%}" for v in values) + ")")
            elif key == "tcp_bps":
                cells.append(f"**{med / 1e9:.2f}G** ("
                             + ", ".join(f"{v / 1e9:.2f}" for v in values) + ")")
            else:
                cells.append(f"**{med:,.0f}** (" + ", ".join(f"{v:,.0f}" for v in values) + ")")
        print(f"| {setup} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
