"""``tapengine stats [DEV...]``: the kernel's counters of links, like ``ip -s link``."""

from __future__ import annotations

import argparse
import time

from tapengine import kstats
from tapengine.cli.common import (
    FloatArg,
    IfnameArg,
    add_json_option,
    add_netns_option,
    example_epilog,
    print_json,
)

#: Longest --interval: a day (two snapshots further apart tell nothing a rate should).
MAX_INTERVAL = 86400.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stats", help="show the kernel's counters (IFLA_STATS64) of links",
        description="Show the kernel's counters of links in the style of 'ip -s link'; --json "
        "is shaped like 'ip -j -s -s link'; --interval shows rates.",
        epilog=example_epilog("tapengine stats tap0 tap1", "tapengine stats --netns lab --json",
                              "tapengine stats tap0 --interval 1"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("devices", nargs="*", metavar="DEV", type=IfnameArg(),
                        help="links to show (default: all)")
    add_netns_option(parser, "the namespace of the links")
    parser.add_argument("--interval", type=FloatArg("interval", high=MAX_INTERVAL),
                        metavar="SECONDS", help="take two snapshots this far apart and show "
                        f"per-second rates (above 0, at most {MAX_INTERVAL:g})")
    add_json_option(parser)
    parser.set_defaults(func=run, command_name="stats")


def _snapshots(args: argparse.Namespace) -> list[kstats.LinkStats]:
    if args.devices:
        return [kstats.read_stats(name, args.netns) for name in args.devices]
    return kstats.read_all_stats(args.netns)


def run(args: argparse.Namespace) -> int:
    before = _snapshots(args)
    if args.interval is None:
        if args.json:
            print_json([snapshot.as_ip_json() for snapshot in before])
        else:
            print("\n".join(kstats.format_ip_style(snapshot) for snapshot in before))
        return 0
    time.sleep(args.interval)
    after = {snapshot.name: snapshot for snapshot in _snapshots(args)}
    rates = [kstats.rates(old, after[old.name]) for old in before if old.name in after]
    if args.json:
        print_json([rate.as_dict() for rate in rates])
        return 0
    print(f"{'DEV':<16}{'rx pps':>12}{'rx Mbit/s':>12}{'tx pps':>12}{'tx Mbit/s':>12}")
    for rate in rates:
        print(f"{rate.name:<16}{rate.rx_packets:>12.0f}{rate.rx_bits / 1e6:>12.3f}"
              f"{rate.tx_packets:>12.0f}{rate.tx_bits / 1e6:>12.3f}")  # fmt: skip
    return 0
