"""Time ``import tapengine`` (data plane only, control plane on first use) against importing the
data plane *and* the control plane, as ``import tapengine`` did before the lazy import: each a fresh
interpreter, interleaved A B A B, medians and the paired ratio.

    .venv/bin/python bench/import_time.py --rounds 21
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python alone": "pass",
    "import tapengine": "import tapengine",
    "import tapengine + control plane": (
        "import tapengine, tapengine.devices, tapengine.engine, tapengine.kstats, "
        "tapengine.netns, tapengine.topology, tapengine.traffic, tapengine.tun"
    ),
}


def once(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, code in CASES.items():
            times[name].append(once(code))
    base = statistics.median(times["python alone"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<34} median {median * 1e3:7.1f} ms  (+{(median - base) * 1e3:6.1f} ms)")
    lazy = [a - b for a, b in zip(times["import tapengine"], times["python alone"], strict=True)]
    full = [a - b for a, b in zip(times["import tapengine + control plane"],
                                  times["python alone"], strict=True)]  # fmt: skip
    ratios = [f / lazy_one for f, lazy_one in zip(full, lazy, strict=True) if lazy_one > 0]
    print(f"eager / lazy import cost, paired median: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
