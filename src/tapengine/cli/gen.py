"""``tapengine gen DEV``: write UDP probe frames into a tap or tun, flat out or at a rate."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tapengine.cli.common import (
    CommandError,
    FloatArg,
    IfnameArg,
    IntArg,
    ParsedArg,
    add_io_option,
    add_json_option,
    add_netns_option,
    add_user_option,
    become,
    example_epilog,
    open_io,
    run_with_progress,
)
from tapengine.traffic import (
    MAX_BATCH,
    MAX_BURST,
    MAX_COUNT,
    MAX_DURATION,
    MAX_FLOWS,
    GenConfig,
    GenResult,
    format_bits,
    format_pps,
    open_device,
    parse_rate,
    parse_size,
    probe_device,
    sizes_of,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gen", help="generate UDP probe traffic into a tap or tun",
        description="Write UDP frames carrying a flow id, a per-flow sequence number and a send "
        "timestamp into the tap or tun DEV, as fast as it takes them or at --rate. Sizes are "
        "Ethernet frame sizes with FCS (64 = 60 bytes written to a tap, a 46-byte IP packet to "
        "a tun); 'imix' is 64/570/1518 in the ratio 7:4:1. Flows use UDP source ports "
        "SRC_PORT .. SRC_PORT+FLOWS-1. Progress goes to stderr when it is a terminal.",
        epilog=example_epilog(
            "tapengine gen tap0 --rate 100kpps --size imix --flows 4 --duration 10",
            "tapengine gen tun0 --netns lab --ipv6 --dst-ip fd77::2 --count 1000000 --json",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("device", metavar="DEV", type=IfnameArg(),
                        help="an existing tap or tun (must be up)")
    add_netns_option(parser, "the namespace DEV lives in")
    parser.add_argument("--rate", default="max", type=ParsedArg("rate", parse_rate),
                        help="100kpps, 1.5Mpps, 500mbit, 1gbit, or max (default)")
    parser.add_argument("--size", default="64", type=ParsedArg("size", parse_size),
                        help="frame size, a list 64,1518, or imix")
    parser.add_argument("--flows", type=IntArg("number of flows", 1, MAX_FLOWS), default=1,
                        help=f"flows (UDP source ports; at most {MAX_FLOWS})")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--count", type=IntArg("count", 1, MAX_COUNT),
                       help="stop after this many packets")
    limit.add_argument("--duration", type=FloatArg("duration", high=MAX_DURATION),
                       metavar="SECONDS", help="stop after this long")
    parser.add_argument("--ipv6", action="store_true", help="UDP over IPv6 (default IPv4)")
    parser.add_argument("--src-ip", help="default 10.77.0.1 or fd77::1")
    parser.add_argument("--dst-ip", help="default 10.77.0.2 or fd77::2")
    parser.add_argument("--src-mac", default="02:77:00:00:00:01", help="(tap only)")
    parser.add_argument("--dst-mac", default="02:77:00:00:00:02", help="(tap only)")
    parser.add_argument("--src-port", type=IntArg("UDP port", 0, 65535), default=10000,
                        help="first UDP source port")
    parser.add_argument("--dst-port", type=IntArg("UDP port", 0, 65535), default=9,
                        help="UDP destination port")
    parser.add_argument("--burst", type=IntArg("burst", 1, MAX_BURST),
                        help="token bucket depth in packets (bits with a bit rate); "
                        "default 10 ms of traffic, at least one batch, at most 1024 frames")
    parser.add_argument("--batch", type=IntArg("batch size", 1, MAX_BATCH), default=32,
                        help=f"frames per batch (1..{MAX_BATCH})")
    add_io_option(parser)
    add_user_option(parser)
    parser.add_argument("--per-flow", action="store_true", help="packets per flow in --json")
    add_json_option(parser, "print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run, command_name="gen")


def _config(args: argparse.Namespace, mode: str) -> GenConfig:
    return GenConfig(
        mode=mode,  # type: ignore[arg-type]
        ipv6=args.ipv6,
        sizes=args.size,
        flows=args.flows,
        rate=args.rate,
        burst=args.burst,
        src_mac=args.src_mac,
        dst_mac=args.dst_mac,
        src_ip=args.src_ip,
        dst_ip=args.dst_ip,
        src_port=args.src_port,
        dst_port=args.dst_port,
        batch=args.batch,
    )


def run(args: argparse.Namespace) -> int:
    # parse and build everything first: bad input changes nothing
    _config(args, "tap").generator()  # the arguments alone first: their errors before lookups
    info = probe_device(args.device, args.netns)
    config = _config(args, info.mode)
    gen = config.generator()
    if not info.up:
        raise CommandError(
            f"{info.name} is down: bring it up first (ip link set {info.name} up); "
            "a tun/tap refuses writes while it is down"
        )
    started = time.monotonic()

    def progress() -> str:
        c = gen.counters[0]
        elapsed = max(time.monotonic() - started, 1e-9)
        return (f"gen {info.name}: {int(c['packets']):,} packets, "
                f"{format_pps(int(c['packets']) / elapsed)}, "
                f"{format_bits(int(c['bytes']) * 8 / elapsed)}")  # fmt: skip

    with open_device(info) as queue, open_io(args.io, max(args.batch, 64)) as io:
        become(args.user)
        _, interrupted = run_with_progress(
            lambda: gen.send(queue, count=args.count, duration=args.duration, io=io),
            gen.stop, progress, show=sys.stderr.isatty() and not args.quiet and not args.json,
        )
    result = GenResult.of(gen)
    asked = str(config.rate) if config.rate else "max"
    if args.json:
        out = {"device": info.name, "netns": info.netns, "mode": info.mode,
               "ip": 6 if config.ipv6 else 4, "flows": config.flows, "sizes": str(config.sizes),
               "written_lengths": sizes_of(gen.lengths), "rate": asked,
               "interrupted": interrupted, **result.as_dict(per_flow=args.per_flow)}  # fmt: skip
        print(json.dumps(out, indent=2))
    else:
        lengths = ", ".join(str(n) for n in sorted(sizes_of(gen.lengths)))
        print(f"gen {info.name}: {result.packets:,} packets ({result.bytes:,} bytes) in "
              f"{result.elapsed_s:.3f} s: {format_pps(result.pps)}, "
              f"{format_bits(result.bits_per_s)} (asked {asked}); {config.flows} flow(s), "
              f"IPv{6 if config.ipv6 else 4}, {lengths} bytes written per frame")  # fmt: skip
    return 130 if interrupted and (args.count or args.duration) else 0
