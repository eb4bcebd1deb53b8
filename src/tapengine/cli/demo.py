"""``tapengine demo``: placeholder until the forwarder lands (replaced by issue 4)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on a built-in topology")
    parser.set_defaults(func=run, command_name="demo")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
