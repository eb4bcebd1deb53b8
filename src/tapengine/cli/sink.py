"""``tapengine sink DEV``: read frames, find loss, duplicates and reordering, measure latency."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tapengine.cli.common import (
    FloatArg,
    IfnameArg,
    IntArg,
    add_io_option,
    add_json_option,
    add_netns_option,
    add_user_option,
    become,
    example_epilog,
    open_io,
    run_with_progress,
)
from tapengine.cli.metrics_option import add_metrics_option, check_metrics, serving_metrics
from tapengine.metrics import SinkCollector
from tapengine.traffic import (
    MAX_COUNT,
    MAX_DURATION,
    MAX_FLOWS,
    LatencyStats,
    Sink,
    SinkResult,
    format_ns,
    format_pps,
    open_device,
    probe_device,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sink", help="count frames from a tap or tun; loss, reordering and latency of probes",
        description="Read every frame from the tap or tun DEV, recognise the probe frames of "
        "'tapengine gen', and report per flow: lost (sequence numbers below the highest seen "
        "that never arrived), duplicates, and reordered (arrived below the highest seen, not a "
        "duplicate); and the one-way latency (p50/p90/p99/max) from the send timestamps, which "
        "needs the generator on the same machine. Other frames are counted apart. Runs until "
        "--count probe frames, --duration, --idle, or Ctrl-C.",
        epilog=example_epilog(
            "tapengine sink tap1 --idle 1",
            "tapengine sink tun1 --netns lab --duration 10 --json --per-flow",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("device", metavar="DEV", type=IfnameArg(), help="an existing tap or tun")
    add_netns_option(parser, "the namespace DEV lives in")
    parser.add_argument("--count", type=IntArg("count", 1, MAX_COUNT),
                        help="stop after this many probe frames")
    parser.add_argument("--duration", type=FloatArg("duration", high=MAX_DURATION),
                        metavar="SECONDS", help="stop after this long")
    parser.add_argument("--idle", type=FloatArg("idle time", high=MAX_DURATION),
                        metavar="SECONDS",
                        help="stop this long after the last probe frame (once one arrived)")
    parser.add_argument("--max-flows", type=IntArg("number of flows", 1, MAX_FLOWS),
                        default=1024, help="flows tracked (ids above are counted as untracked; "
                        f"at most {MAX_FLOWS})")
    parser.add_argument("--per-flow", action="store_true", help="per-flow results in --json")
    add_io_option(parser)
    add_user_option(parser)
    add_metrics_option(parser)
    add_json_option(parser, "print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run, command_name="sink")


def format_latency(latency: LatencyStats | None) -> str:
    if latency is None:
        return "no latency samples"
    return (f"one-way latency p50 {format_ns(latency.p50_ns)}, p90 {format_ns(latency.p90_ns)}, "
            f"p99 {format_ns(latency.p99_ns)}, max {format_ns(latency.max_ns)}")  # fmt: skip


def format_result(name: str, result: SinkResult) -> str:
    return "\n".join([
        f"sink {name}: {result.packets:,} frames ({result.bytes:,} bytes): "
        f"{result.probe_packets:,} probe frames in {result.flows_seen} flow(s), "
        f"{result.other_packets:,} other",
        f"  lost {result.lost:,}, duplicates {result.duplicates:,}, reordered "
        f"{result.reordered:,}; {format_pps(result.pps)} over {result.elapsed_s:.3f} s",
        f"  {format_latency(result.latency)}",
    ])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    check_metrics(args)
    info = probe_device(args.device, args.netns)
    started = time.monotonic()
    with Sink(tun=info.mode == "tun", max_flows=args.max_flows) as sink, \
            serving_metrics(args, SinkCollector(sink, info.name)) as metrics:

        def progress() -> str:
            c = sink.counters[0]
            rate = format_pps(int(c["packets"]) / max(time.monotonic() - started, 1e-9))
            return (f"sink {info.name}: {int(c['packets']):,} frames ({rate}), "
                    f"{int(c['probe_packets']):,} probes, {int(c['duplicates']):,} dup, "
                    f"{int(c['reordered']):,} reordered")  # fmt: skip

        with open_device(info) as queue, open_io(args.io) as io:
            become(args.user)
            if metrics is not None:     # stdout is the result's (JSON): the address on stderr
                print(f"sink {info.name}: metrics at {metrics.url}", file=sys.stderr, flush=True)
            _, interrupted = run_with_progress(
                lambda: sink.run(queue, count=args.count, duration=args.duration, idle=args.idle,
                                 io=io),
                sink.stop, progress, show=sys.stderr.isatty() and not args.quiet and not args.json,
            )
        result = SinkResult.of(sink)
    if args.json:
        out = {"device": info.name, "netns": info.netns, "mode": info.mode,
               "interrupted": interrupted, **result.as_dict(per_flow=args.per_flow)}
        print(json.dumps(out, indent=2))
    else:
        print(format_result(info.name, result))
    return 130 if interrupted and (args.count or args.duration or args.idle) else 0
