"""``tapengine replay FILE DEV``: write a pcap or pcapng file's packets into a tap or tun.

tcpreplay's pacing options where they exist: by default the file's own timing; ``--speed X``
(tcpreplay's ``--multiplier``) X times faster; ``--pps``/``--rate`` and ``--mbps`` through the
generator's token bucket; ``--topspeed`` as fast as the device takes them; ``--loop N`` passes
(0: until stopped). The whole file is checked before the first packet is written.
"""

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
    PathArg,
    add_io_option,
    add_json_option,
    add_netns_option,
    example_epilog,
    open_io,
    run_with_progress,
)
from tapengine.pcap import PcapReader, open_replay
from tapengine.traffic import (
    MAX_COUNT,
    MAX_RATE,
    Rate,
    format_bits,
    format_pps,
    open_device,
    parse_rate,
    probe_device,
)

#: Largest --speed / --multiplier.
MAX_SPEED = 1e6


def _rate(text: str) -> Rate | None:
    rate = parse_rate(text)
    if rate is None:
        raise ValueError(f"a replay rate of {text!r} means no pacing: use --topspeed")
    return rate


def snapped_note(snapped: int) -> str:
    """What the summary says of packets the file holds only in part (tcpreplay warns too):
    they went out shorter than they were, which a reader of the summary would not guess."""
    if not snapped:
        return ""
    return (f", {snapped:,} snapped (written with fewer bytes than they had: the file keeps "
            "only the first caplen bytes of them)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay", help="write a pcap/pcapng file's packets into a tap or tun (like tcpreplay)",
        description="Write the packets of FILE (pcap or pcapng) into the tap or tun DEV: "
        "Ethernet frames into a tap, raw IP packets into a tun (another link type is refused). "
        "Paced by the file's timestamps unless --speed, --pps/--rate, --mbps or --topspeed says "
        "otherwise. Truncated or corrupt files are refused before anything is written.",
        epilog=example_epilog(
            "tapengine replay trace.pcapng tap0 --topspeed --loop 10",
            "tapengine replay trace.pcap tun0 --netns lab --pps 10000 --json",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("file", metavar="FILE", type=PathArg("capture"),
                        help="a pcap or pcapng file")
    parser.add_argument("device", metavar="DEV", type=IfnameArg(),
                        help="an existing tap or tun (must be up)")
    add_netns_option(parser, "the namespace DEV lives in")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument("--pps", "--rate", dest="rate", type=ParsedArg("rate", _rate),
                        metavar="RATE", help="packets per second (10000, 1.5Mpps) or a bit "
                        "rate (500mbit), through the generator's token bucket")
    pacing.add_argument("--mbps", type=FloatArg("rate (Mbit/s)", high=MAX_RATE / 1e6),
                        metavar="M", help="M megabits per second")
    pacing.add_argument("-x", "--speed", "--multiplier", dest="speed", metavar="X",
                        type=FloatArg("speed", high=1e6),
                        help="the file's own timing, X times faster (default: 1)")
    pacing.add_argument("-t", "--topspeed", action="store_true",
                        help="as fast as the device takes them")
    parser.add_argument("-l", "--loop", type=IntArg("loop count", 0, MAX_COUNT), default=1,
                        metavar="N", help="passes over the file (default: 1; 0: until stopped)")
    add_io_option(parser)
    add_json_option(parser, "print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run, command_name="replay")


def run(args: argparse.Namespace) -> int:
    with PcapReader(args.file) as reader:
        reader.scan()       # a file that is no capture, or a broken one, before any device
    info = probe_device(args.device, args.netns)
    rate, bits, speed = 0, False, 1.0 if args.speed is None else args.speed
    if args.rate is not None:
        rate, bits = args.rate.value, args.rate.bits
    elif args.mbps is not None:
        rate, bits = max(int(args.mbps * 1e6), 1), True
    elif args.topspeed:
        speed = 0.0
    replayer = open_replay(args.file, mode=info.mode, rate=rate, bits=bits, speed=speed,
                           loops=args.loop)
    if not info.up:
        raise CommandError(f"{info.name} is down: bring it up first (ip link set {info.name} "
                           "up); a tun/tap refuses writes while it is down")  # fmt: skip
    started = time.monotonic()

    def progress() -> str:
        c = replayer.counters[0]
        elapsed = max(time.monotonic() - started, 1e-9)
        return (f"replay {info.name}: {int(c['packets']):,} packets, "
                f"{format_pps(int(c['packets']) / elapsed)}")  # fmt: skip

    with open_device(info) as queue, open_io(args.io) as io:
        _, interrupted = run_with_progress(
            lambda: replayer.run(queue, io=io), replayer.stop, progress,
            show=sys.stderr.isatty() and not args.quiet and not args.json,
        )
    replayer.reader.close()
    c = replayer.counters[0]
    packets, nbytes = int(c["packets"]), int(c["bytes"])
    elapsed = (int(c["last_ns"]) - int(c["first_ns"])) / 1e9 if packets > 1 else 0.0
    result = {"file": args.file, "format": replayer.summary["format"], "device": info.name,
              "netns": info.netns, "mode": info.mode, "packets": packets, "bytes": nbytes,
              "failed": int(c["failed"]), "too_long": int(c["too_long"]),
              "snapped": int(c["snapped"]),
              "loops": int(c["loops"]), "elapsed_s": round(elapsed, 6),
              "pps": packets / elapsed if elapsed else 0.0,
              "bits_per_s": nbytes * 8 / elapsed if elapsed else 0.0,
              "interrupted": interrupted}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"replay {args.file} -> {info.name}: {packets:,} packets ({nbytes:,} bytes) in "
              f"{elapsed:.3f} s: {format_pps(result['pps'])}, "
              f"{format_bits(result['bits_per_s'])}; {result['failed']:,} refused by the device, "
              f"{result['too_long']:,} too long{snapped_note(result['snapped'])}; "
              f"{result['loops']} pass(es)")  # fmt: skip
    return 0
