"""``tapengine bench``: generator -> tapengine wire -> sink, against the kernel's own path."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from types import FrameType

from tapengine.benchrun import DEFAULT_SIZES, format_table, run_bench
from tapengine.cli import example_epilog
from tapengine.traffic import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure tapengine's wire against the kernel's own path",
        description="Build two private namespaces, send flat-out probe traffic with the generator "
        "through (1) a tapengine wire between two taps and (2) a kernel veth pair, each between "
        "two kernel bridges, and report what the sink receives: packets/s, Gbit/s, loss, "
        "one-way latency and the ratio to the kernel path. Runs alternate engine, kernel, ... "
        "and the table shows medians and spreads. Everything is removed afterwards.",
        epilog=example_epilog("tapengine bench --quick", "tapengine bench --sizes 64,imix "
                              "--rounds 7 --duration 3 --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s (under a minute)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each path per size")
    parser.add_argument("--duration", type=float, default=2.0, metavar="SECONDS",
                        help="length of one run")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="frame sizes (with FCS) or imix, comma-separated")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run, command_name="bench")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the teardown of the namespaces


def run(args: argparse.Namespace) -> int:
    sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    for size in sizes:
        parse_size(size)
    rounds, duration = (3, 1.0) if args.quick else (args.rounds, args.duration)
    if rounds < 1 or duration <= 0:
        raise ValueError("--rounds must be at least 1 and --duration positive")
    started = time.monotonic()

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"bench {time.monotonic() - started:6.1f}s {line}", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run_bench(sizes, rounds=rounds, duration=duration, progress=progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"tapengine bench: {rounds} round(s) of {duration:g} s per path and size, flat out,"
              f" 4 flows; medians (spread min..max)")  # fmt: skip
        print(format_table(report))
    return 0
