"""``tapengine bench``: tapengine's paths side by side with the kernel's own, frames and TCP."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

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
from tapengine.cli.common import (
    CommandError,
    FloatArg,
    IntArg,
    ParsedArg,
    PathArg,
    add_json_option,
    example_epilog,
)
from tapengine.signals import stop_signals
from tapengine.traffic import parse_rate
from tapengine.validate import quote

MAX_ROUNDS = 1000
MAX_RUN_SECONDS = 3600.0
#: Without --quick, and what --quick uses unless the option is given.
DEFAULTS = {"rounds": 5, "duration": 2.0, "tcp_duration": 3.0}
QUICK = {"rounds": 2, "duration": 1.0, "tcp_duration": 1.0}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure tapengine against the kernel's own paths (frames and TCP)",
        description="Build private namespaces and measure, side by side: (frames) the generator "
        "sending flat out through a tapengine wire, a kernel veth pair and the naive Python "
        "forwarder (tapengine.naive_forward), each between two kernel bridges, into the sink: "
        "delivered packets/s, Gbit/s, loss and one-way latency; (TCP) one iperf3 stream through a "
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
                        help="2 rounds, 1 s per frame run and 1 s per TCP run (about a minute); "
                        "--rounds, --duration and --tcp-duration still apply when given")
    parser.add_argument("--rounds", type=IntArg("number of rounds", 1, MAX_ROUNDS),
                        help=f"runs of each scenario (default 5, at most {MAX_ROUNDS})")
    parser.add_argument("--duration", type=FloatArg("duration", high=MAX_RUN_SECONDS),
                        metavar="SECONDS", help="length of one frame run (default 2)")
    parser.add_argument("--tcp-duration", metavar="SECONDS",
                        type=FloatArg("TCP run length", low=1, high=MAX_RUN_SECONDS,
                                      low_inclusive=True),
                        help="length of one iperf3 run (default 3, at least 1)")
    parser.add_argument("--rate", default="max", type=ParsedArg("rate", parse_rate),
                        help="the generator's rate in the frame runs, e.g. 50kpps or 200mbit "
                        "(default max: flat out, and the figure is what gets through)")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES),
                        type=ParsedArg("sizes", parse_sizes),
                        help="frame sizes (Ethernet, with FCS) or imix, comma-separated "
                        f"(default {','.join(DEFAULT_SIZES)})")
    parser.add_argument("--scenarios", default="all", type=ParsedArg("scenarios", parse_scenarios),
                        help="comma-separated: " + ", ".join((*SCENARIO_GROUPS, *SCENARIO_NAMES))
                        + " (default all; all leaves out readv and tcp-readv, the engine "
                        "with its readv/writev backend instead of the default)")
    add_json_option(parser, "print the report as JSON")
    parser.add_argument("--plot", type=PathArg("plot"), metavar="FILE.png",
                        help="also draw throughput against frame size and the latency "
                        "distribution (needs matplotlib: pip install 'tapengine[plot]')")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--prefix", type=ParsedArg("bench prefix", _prefix),
                        help="name prefix of the namespaces and links built for the run "
                        "(default: te and 6 random hex digits)")
    parser.set_defaults(func=run, command_name="bench")


def _prefix(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9]{3,9}", text):
        raise ValueError(f"invalid prefix {quote(text)}: use 4 to 10 lowercase letters and "
                         "digits, starting with a letter (the default is te + 6 hex)")
    return text


def run(args: argparse.Namespace) -> int:
    selection, sizes = args.scenarios, args.sizes
    rate = args.rate
    base = QUICK if args.quick else DEFAULTS
    rounds, duration, tcp_duration = (
        base[name] if getattr(args, name) is None else getattr(args, name) for name in base
    )
    if args.plot is not None:
        args.plot = Path(args.plot)
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

    try:
        with stop_signals("raise"):  # unwinds through the teardown of the namespaces
            report = run_bench(selection, sizes, rounds=rounds, duration=duration,
                               tcp_duration=tcp_duration, rate=rate, progress=progress,
                               prefix=args.prefix)
    except (RuntimeError, subprocess.SubprocessError) as err:  # a forwarder or iperf3 failed
        raise CommandError(str(err).splitlines()[0] if str(err) else repr(err)) from None
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
