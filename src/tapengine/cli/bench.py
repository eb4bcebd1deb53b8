"""``tapengine bench``: tapengine's paths side by side with the kernel's own, frames and TCP."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from tapengine.benchrun import (
    DEFAULT_SIZES,
    SCENARIO_GROUPS,
    SCENARIO_NAMES,
    format_table,
    legend,
    machine,
    parse_scenarios,
    parse_sizes,
    run_bench,
)
from tapengine.cli import CommandError, example_epilog
from tapengine.traffic import parse_rate


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure tapengine against the kernel's own paths (frames and TCP)",
        description="Build private namespaces and measure, side by side: (frames) the generator "
        "sending flat out through a tapengine wire, a kernel veth pair and the naive Python "
        "forwarder (bench/baselines), each between two kernel bridges, into the sink: delivered "
        "packets/s, Gbit/s, loss and one-way latency; (TCP) one iperf3 stream through a "
        "tapengine wire with offloads, a veth pair, a kernel bridge and the naive forwarder. "
        "Runs are interleaved and repeated; the table shows medians, spreads and the ratio to "
        "the kernel's path in the same run. Everything is removed afterwards, also on Ctrl-C. "
        "Needs root and iperf3.",
        epilog=example_epilog(
            "tapengine bench --quick",
            "tapengine bench --scenarios engine,kernel --sizes 64,imix --rounds 7 --json",
            "tapengine bench --scenarios frames --sizes 64 --rate 40kpps",
            "tapengine bench --plot bench.png"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, 1 s per frame run and 1 s per TCP run (about a minute)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each scenario (default 5)")
    parser.add_argument("--duration", type=float, default=2.0, metavar="SECONDS",
                        help="length of one frame run (default 2)")
    parser.add_argument("--tcp-duration", type=float, default=3.0, metavar="SECONDS",
                        help="length of one iperf3 run (default 3, at least 1)")
    parser.add_argument("--rate", default="max",
                        help="the generator's rate in the frame runs, e.g. 50kpps or 200mbit "
                        "(default max: flat out, and the figure is what gets through)")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        help="frame sizes (Ethernet, with FCS) or imix, comma-separated "
                        f"(default {','.join(DEFAULT_SIZES)})")
    parser.add_argument("--scenarios", default="all",
                        help="comma-separated: " + ", ".join((*SCENARIO_GROUPS, *SCENARIO_NAMES))
                        + " (default all; all leaves out uring and tcp-uring, the engine "
                        "with its io_uring backend)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="also draw throughput against frame size and the latency "
                        "distribution (needs matplotlib: pip install 'tapengine[plot]')")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--prefix", help="name prefix of the namespaces and links built for the "
                        "run (default: te and 6 random hex digits)")
    parser.set_defaults(func=run, command_name="bench")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the teardown of the namespaces


def run(args: argparse.Namespace) -> int:
    selection = parse_scenarios(args.scenarios)
    sizes = parse_sizes(args.sizes)
    rate = parse_rate(args.rate)
    if args.quick:
        rounds, duration, tcp_duration = 2, 1.0, 1.0
    else:
        rounds, duration, tcp_duration = args.rounds, args.duration, args.tcp_duration
    if rounds < 1:
        raise CommandError(f"--rounds must be at least 1, not {rounds}")
    if duration <= 0:
        raise CommandError(f"--duration must be positive, not {duration:g}")
    if tcp_duration < 1:
        raise CommandError(f"--tcp-duration must be at least 1 second, not {tcp_duration:g}")
    if args.prefix is not None and not re.fullmatch(r"[a-z][a-z0-9]{3,9}", args.prefix):
        raise CommandError(f"invalid --prefix {args.prefix!r}: use 4 to 10 lowercase letters "
                           "and digits, starting with a letter (the default is te + 6 hex)")
    if args.plot is not None:
        from tapengine.benchplot import PlotUnavailableError, require_matplotlib

        try:
            require_matplotlib()  # before minutes of measuring, not after
        except PlotUnavailableError as err:
            raise CommandError(str(err)) from None
        if not args.plot.parent.is_dir():
            raise CommandError(f"cannot write the plot to {args.plot}: no directory "
                               f"{args.plot.parent}")  # fmt: skip
    started = time.monotonic()

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"bench {time.monotonic() - started:6.1f}s {line}", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run_bench(selection, sizes, rounds=rounds, duration=duration,
                           tcp_duration=tcp_duration, rate=rate, progress=progress,
                           prefix=args.prefix)
    except (RuntimeError, subprocess.SubprocessError) as err:  # a forwarder or iperf3 failed
        raise CommandError(str(err).splitlines()[0] if str(err) else repr(err)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.plot is not None:
        from tapengine.benchplot import plot_report

        plot_report(report, args.plot)
        progress(f"plot written to {args.plot}")
    if args.json:
        print(json.dumps({"machine": machine(), **report.as_dict()}, indent=2))
    else:
        print(f"tapengine bench on {machine()}, {report.elapsed_s:.0f} s")
        print(format_table(report))
        print()
        print(legend(report))
    return 0
