"""The ``tapengine`` command line.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
module adds its parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace``
and returning an exit code. Expected errors become one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from tapengine import __version__
from tapengine.errors import TapengineError

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "demo",
    "forward",
    "tap",
    "bridge",
    "netns",
    "topology",
    "stats",
    "cleanup",
    "gen",
    "sink",
    "bench",
)


class CommandError(Exception):
    """An error a command reports as one line: what failed, why, what to do."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tapengine",
        description="A Linux packet engine for tun/tap devices.",
        epilog="Run 'tapengine COMMAND --help' for the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"tapengine.cli.{name}").register(subparsers)
    return parser


def example_epilog(*lines: str) -> str:
    """An ``--help`` epilog showing example invocations."""
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def add_io_option(parser: argparse.ArgumentParser) -> None:
    """``--io readv|uring``: how batches reach the kernel."""
    parser.add_argument(
        "--io", choices=("readv", "uring"), default="readv",
        help="one system call per packet (readv/writev, the default) or one io_uring_enter per "
             "batch (uring)",
    )


def open_io(choice: str, entries: int = 256) -> contextlib.AbstractContextManager[Any]:
    """A context manager giving the ``UringIO`` for ``--io uring``, or ``None`` for readv."""
    if choice != "uring":
        return contextlib.nullcontext()
    from tapengine._uring import UringIO, available, unavailable_reason

    if not available():
        raise CommandError(f"io_uring is not usable here: {unavailable_reason()}; use --io readv")
    return UringIO(entries)


def _one_line(err: Exception) -> str:
    # Our own OSErrors carry a complete message in strerror; "[Errno 17] " in front adds nothing.
    if isinstance(err, OSError) and isinstance(err, TapengineError) and err.strerror:
        return err.strerror
    return str(err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (``tapengine stats --json | head``): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("tapengine: interrupted", file=sys.stderr)
        return 130
    except (CommandError, OSError, ValueError) as err:
        print(f"tapengine {args.command_name}: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
