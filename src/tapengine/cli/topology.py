"""``tapengine topology up|down|check FILE``: build and remove a TOML topology as one unit."""

from __future__ import annotations

import argparse
import signal
import sys

from tapengine.cli.common import (
    CommandError,
    FloatArg,
    PathArg,
    PrefixArg,
    add_actions,
    add_json_option,
    example_epilog,
    print_json,
)
from tapengine.cli.forward import MAX_STATS_INTERVAL, serve
from tapengine.topology import Topology


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "topology", help="build or remove a topology described in a TOML file",
        description="Build (up) or remove (down) the namespaces, taps, veths and bridges a TOML "
        "file describes, all or nothing. See examples/topology.toml.",
        epilog=example_epilog("tapengine topology up examples/topology.toml",
                              "tapengine topology up examples/topology.toml --hold",
                              "tapengine topology up examples/wire.toml --forward",
                              "tapengine topology down examples/topology.toml"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.set_defaults(command_name="topology")
    actions = add_actions(parser)

    def action(name: str, helptext: str, example: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=helptext, epilog=example_epilog(example),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("file", type=PathArg("topology file"),
                         help="topology TOML file (a regular file of at most 1 MiB)")
        sub.add_argument("--prefix", type=PrefixArg(min_length=1),
                         help="override the file's name prefix")
        add_json_option(sub, "print the topology as JSON")
        return sub

    up = action("up", "build it (on failure or Ctrl-C nothing is left behind)",
                "tapengine topology up examples/topology.toml --prefix lab1-")
    up.add_argument("--hold", action="store_true",
                    help="keep it until SIGINT/SIGTERM, then remove it")
    up.add_argument("--forward", action="store_true",
                    help="serve the file's [engine] ports (a wire or a switch, as its 'mode' "
                         "says) until a stop signal, then print the final stats and remove "
                         "it all; with --json only the final stats")
    up.add_argument("--stats-interval", default=0.0, metavar="S",
                    type=FloatArg("stats interval", high=MAX_STATS_INTERVAL, low_inclusive=True),
                    help="with --forward: live rates on stderr every S seconds (0: none)")
    up.set_defaults(func=run_up, command_name="topology up")

    down = action("down", "remove everything it names",
                  "tapengine topology down examples/topology.toml")
    down.add_argument("--force", action="store_true",
                      help="also remove what has a name of the file but was not created by "
                           "tapengine, or is of another kind (never physical devices or lo)")
    down.set_defaults(func=run_down, command_name="topology down")

    check = action("check", "check the file and show what it would build",
                   "tapengine topology check examples/topology.toml --json")
    check.set_defaults(func=run_check, command_name="topology check")


def _load(args: argparse.Namespace) -> Topology:
    return Topology.from_file(args.file, prefix=args.prefix)


def _show(topology: Topology, args: argparse.Namespace, verb: str) -> None:
    if args.json:
        print_json(topology.describe())
        return
    described = topology.describe()
    print(f"{verb} {described['source']}: {len(described['netns'])} namespaces, "
          f"{len(described['links'])} links")  # fmt: skip
    for link in described["links"]:
        where = f" in {link['netns']}" if link["netns"] else ""
        addresses = f" {' '.join(link['addresses'])}" if link["addresses"] else ""
        print(f"  {link['kind']:<6} {link['name']}{where}{addresses}")
    for port in described["engine_ports"]:
        print(f"  engine port {port['name']} ({port['mode']}, {port['queues']} queues"
              f"{', vnet_hdr' if port['vnet_hdr'] else ''})")  # fmt: skip


def run_up(args: argparse.Namespace) -> int:
    topology = _load(args)
    if args.forward:
        return _forward(topology, args)
    if not args.hold:
        topology.up()
        _show(topology, args, "built")
        return 0
    with topology:
        _show(topology, args, "built")
        print("holding; Ctrl-C or SIGTERM removes it", flush=True)
        while True:
            signal.pause()  # the topology's handlers raise on SIGINT/SIGTERM
    return 0  # pragma: no cover - the loop only ends by a signal


def _forward(topology: Topology, args: argparse.Namespace) -> int:
    if not topology.engine_ports:
        raise CommandError(f"{args.file} has no [engine] ports to forward between "
                           '(add: [engine] ports = ["tap0", "tap1"])')  # fmt: skip
    with topology:
        if not args.json:
            _show(topology, args, "built")
        ports = topology.open_engine_ports()
        joiner = " <-> " if topology.engine_mode == "wire" else ", "
        label = joiner.join(port.name for port in topology.engine_ports)
        return serve(ports, topology.engine_mode, command="topology up",  # type: ignore[arg-type]
                     label=label, stats_interval=args.stats_interval, as_json=args.json)


def run_down(args: argparse.Namespace) -> int:
    topology = _load(args)
    removed = topology.down(force=args.force)
    if not args.json:
        what = ", ".join(removed) if removed else "nothing existed"
        print(f"removed {args.file}: {what}", file=sys.stdout)
    else:
        print_json(topology.describe())
    return 0


def run_check(args: argparse.Namespace) -> int:
    _show(_load(args), args, "ok")
    return 0
