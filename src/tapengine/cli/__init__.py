"""The ``tapengine`` command line.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
module adds its parser and sets ``func`` to a callable taking the parsed ``argparse.Namespace``
and returning an exit code. Expected errors become one line on stderr and exit code 1; usage
errors (a value out of range, a missing argument) one line and exit code 2. What the commands
share (argument types, options, output helpers) is in ``tapengine.cli.common``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tapengine import __version__
from tapengine.cli.common import (
    CommandError,
    Parser,
    add_io_option,
    example_epilog,
    one_line,
    open_io,
)
from tapengine.errors import TapengineError
from tapengine.signals import Terminated, signal_name

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
    "capture",
    "replay",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tapengine",
        description="A Linux packet engine for tun/tap devices.",
        epilog="Run 'tapengine COMMAND --help' for the options and an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"tapengine.cli.{name}").register(subparsers)
    return parser


def _one_line(err: BaseException) -> str:
    # Our own OSErrors carry a complete message in strerror; "[Errno 17] " in front adds nothing.
    if isinstance(err, OSError) and isinstance(err, TapengineError) and err.strerror:
        return one_line(err.strerror)
    return one_line(str(err) or type(err).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()     # imports every command's modules: a second or so when loaded
        args = parser.parse_args(argv)
    except KeyboardInterrupt:       # Ctrl-C before the command started: one line, no traceback
        print("tapengine: interrupted while starting", file=sys.stderr)
        return 130
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (``tapengine stats --json | head``): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Terminated as err:  # a stop signal; what the command had built was removed on the way
        print(f"tapengine {args.command_name}: interrupted by {signal_name(err.signum)}",
              file=sys.stderr)  # fmt: skip
        return 130  # as for Ctrl-C, whichever stop signal it was
    except KeyboardInterrupt:
        print(f"tapengine {args.command_name}: interrupted", file=sys.stderr)
        return 130
    except (CommandError, OSError, ValueError) as err:
        print(f"tapengine {args.command_name}: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug of ours: still one line, and no traceback unless asked
        if os.environ.get("TAPENGINE_DEBUG"):
            raise
        print(f"tapengine {args.command_name}: internal error: {type(err).__name__}: "
              f"{_one_line(err)} (please report it; TAPENGINE_DEBUG=1 shows the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1


__all__ = ["CommandError", "add_io_option", "build_parser", "example_epilog", "main", "open_io"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
