"""``tapengine tap add|del|list``: persistent tun/tap devices."""

from __future__ import annotations

import argparse
import contextlib

from tapengine import devices, validate
from tapengine.cli.common import (
    CidrArg,
    CommandError,
    IdArg,
    IfnameArg,
    IntArg,
    MacArg,
    add_actions,
    add_json_option,
    add_netns_option,
    example_epilog,
    print_json,
)


def add_link_settings(parser: argparse.ArgumentParser) -> None:
    """--mtu, --mac, --address and --up, shared by ``tap add`` and ``bridge add``."""
    parser.add_argument("--mtu", type=IntArg("MTU", validate.MIN_MTU, validate.MAX_MTU),
                        help=f"MTU ({validate.MIN_MTU}-{validate.MAX_MTU})")
    parser.add_argument("--mac", type=MacArg(), help="MAC address, e.g. 02:00:00:00:00:01")
    parser.add_argument("--address", action="append", default=[], metavar="CIDR", type=CidrArg(),
                        help="IPv4 or IPv6 address with prefix (repeatable), e.g. 10.77.0.1/24")
    parser.add_argument("--up", action="store_true", help="bring the link up")


def check_link_settings(args: argparse.Namespace) -> None:
    """Check the settings before anything is created, so bad input changes nothing (the
    argument types did already; this holds for a Namespace built another way too)."""
    if args.mtu is not None:
        validate.check_mtu(args.mtu)
    if args.mac is not None:
        validate.check_mac(args.mac)
    for cidr in args.address:
        validate.check_cidr(cidr)


def apply_link_settings(link: devices.Link, args: argparse.Namespace) -> None:
    if args.mtu is not None:
        link.set_mtu(args.mtu)
    if args.mac is not None:
        link.set_mac(args.mac)
    for cidr in args.address:
        link.add_address(cidr)
    if args.up:
        link.up()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tap", help="create, delete and list tun/tap devices",
        description="Create, delete and list persistent tun/tap devices.",
        epilog=example_epilog("tapengine tap add tap0 --queues 4 --vnet-hdr --owner $USER --up",
                              "tapengine tap list --json", "tapengine tap del tap0"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.set_defaults(command_name="tap")
    actions = add_actions(parser)

    add = actions.add_parser(
        "add", help="create a persistent tap (or tun) device",
        epilog=example_epilog("tapengine tap add tap0 --queues 2 --vnet-hdr --netns lab --up"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add.add_argument("name", type=IfnameArg(), help="interface name (at most 15 bytes)")
    add.add_argument("--tun", action="store_true", help="a layer-3 tun device instead of a tap")
    add.add_argument("--queues", type=IntArg("number of queues", 1, validate.MAX_TAP_QUEUES),
                     default=1, help="number of queues; more than 1 makes it multi-queue "
                     f"(at most {validate.MAX_TAP_QUEUES})")  # fmt: skip
    add.add_argument("--vnet-hdr", action="store_true", help="create with IFF_VNET_HDR")
    add.add_argument("--owner", type=IdArg("user"), help="user (name or uid) allowed to open it")
    add.add_argument("--group", type=IdArg("group"),
                     help="group (name or gid) allowed to open it")
    add_netns_option(add, "create it inside this network namespace")
    add_link_settings(add)
    add_json_option(add, "print the new device as JSON")
    add.set_defaults(func=run_add, command_name="tap add")

    delete = actions.add_parser(
        "del", help="delete a tap or tun device",
        epilog=example_epilog("tapengine tap del tap0 --netns lab"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    delete.add_argument("name", type=IfnameArg())
    add_netns_option(delete, "the namespace it is in")
    delete.add_argument("--force", action="store_true", help="succeed if it does not exist")
    delete.set_defaults(func=run_del, command_name="tap del")

    listing = actions.add_parser(
        "list", help="list tap and tun devices",
        epilog=example_epilog("tapengine tap list --netns lab --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_netns_option(listing, "list the devices of this namespace")
    add_json_option(listing)
    listing.set_defaults(func=run_list, command_name="tap list")


def run_add(args: argparse.Namespace) -> int:
    check_link_settings(args)
    link = devices.create_tap(
        args.name, mode="tun" if args.tun else "tap", queues=args.queues, vnet_hdr=args.vnet_hdr,
        owner=args.owner, group=args.group, netns=args.netns,
    )  # fmt: skip
    with link:  # deleted again if a setting fails: a failed command changes nothing
        apply_link_settings(link, args)
        info = link.info()
        link.owned = False
    if args.json:
        print_json(info)
    else:
        where = f" in namespace {args.netns}" if args.netns else ""
        print(f"created {info['kind']} {args.name}{where}")
    return 0


def run_del(args: argparse.Namespace) -> int:
    try:
        link = devices.get_link(args.name, args.netns)
    except devices.DeviceNotFoundError:
        if args.force:
            return 0
        raise CommandError(
            f"no tap or tun named {args.name!r} in "
            f"{'namespace ' + repr(args.netns) if args.netns else 'this namespace'} "
            "(see 'tapengine tap list'; --force ignores missing devices)"
        ) from None
    if link.kind not in ("tap", "tun"):
        raise CommandError(f"{args.name!r} is a {link.kind}, not a tap or tun; nothing deleted")
    with contextlib.suppress(devices.DeviceNotFoundError):
        link.delete(force=args.force)
    return 0


def run_list(args: argparse.Namespace) -> int:
    infos = [link.info() for link in devices.list_links(args.netns) if link.kind in ("tap", "tun")]
    if args.json:
        print_json(infos)
        return 0
    for info in infos:
        tun = info.get("tun", {})
        extras = [
            "multi_queue" if tun.get("multi_queue") else "",
            "vnet_hdr" if tun.get("vnet_hdr") else "",
            "persist" if tun.get("persist") else "",
            f"owner {tun['owner']}" if tun.get("owner") is not None else "",
            f"group {tun['group']}" if tun.get("group") is not None else "",
        ]
        print(f"{info['index']}: {info['name']}: {info['kind']} mtu {info['mtu']} "
              f"state {info['operstate']} {' '.join(e for e in extras if e)}".rstrip())  # fmt: skip
    return 0
