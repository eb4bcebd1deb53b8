"""``tapengine bridge add|del|attach|detach|list``: Linux bridges and their ports."""

from __future__ import annotations

import argparse

from tapengine import devices
from tapengine.cli.common import (
    CommandError,
    IfnameArg,
    add_actions,
    add_json_option,
    add_netns_option,
    example_epilog,
    print_json,
)
from tapengine.cli.tap import add_link_settings, apply_link_settings, check_link_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bridge", help="create and delete bridges, attach and detach ports",
        description="Create and delete Linux bridges (STP off by default); attach and detach "
        "ports.",
        epilog=example_epilog("tapengine bridge add br0 --up", "tapengine bridge attach br0 tap0",
                              "tapengine bridge list --json"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.set_defaults(command_name="bridge")
    actions = add_actions(parser)

    def action(name: str, helptext: str, example: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=helptext, epilog=example_epilog(example),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        add_netns_option(sub, "the namespace of the bridge (and its ports)")
        return sub

    add = action("add", "create a bridge", "tapengine bridge add br0 --stp --up")
    add.add_argument("name", type=IfnameArg())
    add.add_argument("--stp", action="store_true", help="enable the spanning tree protocol")
    add_link_settings(add)
    add_json_option(add, "print the new bridge as JSON")
    add.set_defaults(func=run_add, command_name="bridge add")

    delete = action("del", "delete a bridge (its ports stay)", "tapengine bridge del br0")
    delete.add_argument("name", type=IfnameArg())
    delete.add_argument("--force", action="store_true", help="succeed if it does not exist")
    delete.set_defaults(func=run_del, command_name="bridge del")

    attach = action("attach", "make a link a port of a bridge", "tapengine bridge attach br0 tap0")
    attach.add_argument("bridge", type=IfnameArg())
    attach.add_argument("port", type=IfnameArg())
    attach.set_defaults(func=run_attach, command_name="bridge attach")

    detach = action("detach", "remove a port from a bridge", "tapengine bridge detach br0 tap0")
    detach.add_argument("bridge", type=IfnameArg())
    detach.add_argument("port", type=IfnameArg())
    detach.set_defaults(func=run_detach, command_name="bridge detach")

    listing = action("list", "list bridges and their ports", "tapengine bridge list --json")
    add_json_option(listing)
    listing.set_defaults(func=run_list, command_name="bridge list")


def _bridge(name: str, netns: str | None) -> devices.Bridge:
    try:
        return devices.get_bridge(name, netns)
    except devices.DeviceNotFoundError:
        where = f"namespace {netns!r}" if netns else "this namespace"
        raise CommandError(
            f"no bridge named {name!r} in {where} "
            f"(create it with 'tapengine bridge add {name}{' --netns ' + netns if netns else ''}')"
        ) from None


def run_add(args: argparse.Namespace) -> int:
    check_link_settings(args)
    with devices.create_bridge(args.name, netns=args.netns, stp=args.stp) as bridge:
        apply_link_settings(bridge, args)  # a failure deletes the bridge again
        info = bridge.info()
        bridge.owned = False
    if args.json:
        print_json(info)
    else:
        print(f"created bridge {args.name}" + (f" in namespace {args.netns}" if args.netns else ""))
    return 0


def run_del(args: argparse.Namespace) -> int:
    try:
        bridge = devices.get_bridge(args.name, args.netns)
    except devices.DeviceNotFoundError:
        if args.force:
            return 0
        raise
    bridge.delete(force=args.force)
    return 0


def run_attach(args: argparse.Namespace) -> int:
    bridge = _bridge(args.bridge, args.netns)
    try:
        port = devices.get_link(args.port, args.netns)
    except devices.DeviceNotFoundError:
        where = f"namespace {args.netns!r}" if args.netns else "this namespace"
        raise CommandError(f"no link named {args.port!r} in {where}: nothing to attach to "
                           f"{args.bridge!r}") from None  # fmt: skip
    if port.kind == "bridge":
        raise CommandError(
            f"cannot attach bridge {args.port!r} to bridge {args.bridge!r}: a bridge cannot be "
            "a port of another bridge; join them with a veth pair instead"
        )
    bridge.attach(args.port)
    return 0


def run_detach(args: argparse.Namespace) -> int:
    _bridge(args.bridge, args.netns).detach(args.port)
    return 0


def run_list(args: argparse.Namespace) -> int:
    bridges = [link for link in devices.list_links(args.netns) if isinstance(link, devices.Bridge)]
    rows = []
    for bridge in bridges:
        info = bridge.info()
        rows.append({"name": bridge.name, "index": info["index"], "mtu": info["mtu"],
                     "operstate": info["operstate"], "ports": bridge.ports()})  # fmt: skip
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        print(f"{row['index']}: {row['name']}: mtu {row['mtu']} state {row['operstate']} "
              f"ports: {' '.join(row['ports']) or '(none)'}")  # fmt: skip
    return 0
