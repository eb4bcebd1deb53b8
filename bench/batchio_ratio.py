"""Interleaved A/B comparison: batched recv_batch/send_batch vs a plain os.read/os.write loop.

    .venv/bin/python bench/batchio_ratio.py [--rounds 15] [--packets 20000] [--json]

For each frame size, alternates A B A B ...: each run moves ``--packets`` frames through a tap pair
(tap -> kernel bridge -> tap) in batches of 64. Prints the median packets/s of each side, the
spread (min..max) and the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from tap_pair import TapPair, batched_round_trip, make_rings, plain_round_trip, tap_pair

BATCH = 64


def rate(pair: TapPair, size: int, packets: int, batched: bool) -> float:
    tx, rx, frames = make_rings(size, BATCH)
    rounds = packets // BATCH
    start = time.perf_counter()
    for _ in range(rounds):
        if batched:
            batched_round_trip(pair, tx, rx, BATCH)
        else:
            plain_round_trip(pair, frames, BATCH)
    return rounds * BATCH / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    with tap_pair() as pair:
        for size in (64, 1500):
            samples: dict[str, list[float]] = {"batched": [], "plain": []}
            for _ in range(args.rounds):
                samples["batched"].append(rate(pair, size, args.packets, True))
                samples["plain"].append(rate(pair, size, args.packets, False))
            medians = {k: statistics.median(v) for k, v in samples.items()}
            results[size] = {
                "batched_pps": medians["batched"],
                "plain_pps": medians["plain"],
                "batched_spread": [min(samples["batched"]), max(samples["batched"])],
                "plain_spread": [min(samples["plain"]), max(samples["plain"])],
                "ratio": medians["batched"] / medians["plain"],
            }
    if args.json:
        json.dump({"machine": platform.uname()._asdict(), "results": results}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'size':>5} {'batched pps':>12} {'plain pps':>12} {'ratio':>6}  spread (min..max)")
    for size, r in results.items():
        print(f"{size:>5} {r['batched_pps']:>12,.0f} {r['plain_pps']:>12,.0f} {r['ratio']:>6.2f}"
              f"  batched {r['batched_spread'][0]:,.0f}..{r['batched_spread'][1]:,.0f},"
              f" plain {r['plain_spread'][0]:,.0f}..{r['plain_spread'][1]:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
