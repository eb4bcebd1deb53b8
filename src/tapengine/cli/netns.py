"""``tapengine netns add|del|list``: named network namespaces (the ones ``ip netns`` sees)."""

from __future__ import annotations

import argparse

from tapengine import netns
from tapengine.cli.common import NetnsArg, add_actions, add_json_option, example_epilog, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "netns", help="create, delete and list network namespaces",
        description="Create, delete and list named network namespaces (/run/netns).",
        epilog=example_epilog("tapengine netns add lab", "tapengine netns list --json",
                              "tapengine netns del lab"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.set_defaults(command_name="netns")
    actions = add_actions(parser)

    add = actions.add_parser("add", help="create a namespace (its loopback up)",
                             epilog=example_epilog("tapengine netns add lab"),
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add.add_argument("name", type=NetnsArg())
    add.set_defaults(func=run_add, command_name="netns add")

    delete = actions.add_parser(
        "del", help="delete a namespace and the virtual links in it",
        epilog=example_epilog("tapengine netns del lab --force"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    delete.add_argument("name", type=NetnsArg())
    delete.add_argument("--force", action="store_true", help="succeed if it does not exist")
    delete.set_defaults(func=run_del, command_name="netns del")

    listing = actions.add_parser("list", help="list namespaces",
                                 epilog=example_epilog("tapengine netns list --json"),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_json_option(listing)
    listing.set_defaults(func=run_list, command_name="netns list")


def run_add(args: argparse.Namespace) -> int:
    netns.create_netns(args.name)
    print(f"created network namespace {args.name}")
    return 0


def run_del(args: argparse.Namespace) -> int:
    netns.delete_netns(args.name, force=args.force)
    return 0


def run_list(args: argparse.Namespace) -> int:
    names = netns.list_netns()
    if args.json:
        print_json([{"name": name} for name in names])  # the shape of 'ip -j netns list'
    else:
        for name in names:
            print(name)
    return 0
