"""``tapengine cleanup --prefix P``: remove leftover namespaces and links after a crash."""

from __future__ import annotations

import argparse

from tapengine.cleanup import cleanup_prefix
from tapengine.cli.common import PrefixArg, add_json_option, example_epilog, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cleanup", help="remove namespaces and links whose names start with a prefix",
        description="Remove every network namespace whose name starts with PREFIX, and every link "
        "whose name does, in this namespace and in all named namespaces, that tapengine created "
        "(it marks what it creates). Use it after a crash (or kill -9) left a topology half "
        "built. If the prefix matches anything tapengine did not create, nothing is removed "
        "(--force removes such virtual devices and namespaces too); physical devices, lo and "
        "the namespace tapengine runs in are never removed.",
        epilog=example_epilog("tapengine cleanup --prefix demo-",
                              "tapengine cleanup --prefix demo- --dry-run"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--prefix", required=True, type=PrefixArg(min_length=2),
                        help="name prefix (at least 2 characters)")
    parser.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    parser.add_argument("--force", action="store_true",
                        help="also remove matching virtual devices and namespaces that tapengine "
                             "did not create")
    add_json_option(parser, "print what was removed as JSON")
    parser.set_defaults(func=run, command_name="cleanup")


def run(args: argparse.Namespace) -> int:
    removed = cleanup_prefix(args.prefix, dry_run=args.dry_run, force=args.force)
    if args.json:
        print_json(removed)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for link in removed["links"]:
        print(f"{verb} link {link}")
    for ns in removed["netns"]:
        print(f"{verb} namespace {ns}")
    if not removed["links"] and not removed["netns"]:
        print(f"nothing starts with {args.prefix!r}")
    return 0
