"""What every ``tapengine`` command shares: the parser class, argument types, common options,
JSON output, progress while work runs in a thread, and the I/O backend option.

Argument types are built on ``tapengine.validate``, so a value from the command line gets the same
check as one from a topology file or the Python API, and is refused while the arguments are
parsed: before anything on the machine changes. A refused value is one line on stderr and exit
code 2 (a usage error); errors while a command runs are one line and exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import pwd
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from tapengine import validate
from tapengine.errors import InvalidNameError, InvalidValueError

#: Longest error line printed; longer ones are cut in the middle (a 200 KB name is no message).
MESSAGE_LIMIT = 400

PROGRESS_INTERVAL = 0.5


class CommandError(Exception):
    """An error a command reports as one line: what failed, why, what to do."""


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line (newlines and runs of blanks become one space), at most ``limit``
    characters: a longer text keeps its start and end around ``... (N chars cut) ...``."""
    flat = re.sub(r"\s*\n\s*|\r", " ", text).strip()
    if len(flat) <= limit:
        return flat
    keep = (limit - 30) // 2
    return f"{flat[:keep]} ... ({len(flat) - 2 * keep} chars cut) ... {flat[-keep:]}"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr with exit code 2."""

    def error(self, message: str) -> NoReturn:
        if "required: ACTION" in message:
            actions = self._action_names()
            message = f"missing ACTION: one of {', '.join(actions)}"
        self.exit(2, f"{one_line(f'{self.prog}: {message}')} (see '{self.prog} --help')\n")

    def _action_names(self) -> list[str]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return list(action.choices)
        return []


def example_epilog(*lines: str) -> str:
    """An ``--help`` epilog showing example invocations."""
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def add_actions(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The ACTION subcommands of ``tap``, ``bridge``, ``netns``, ``topology``: one is required."""
    return parser.add_subparsers(title="actions", metavar="ACTION", required=True)


# -- argument types --------------------------------------------------------------------------
# Each is a callable for ``add_argument(type=...)`` that raises ``ArgumentTypeError`` with the
# validator's message; its attributes say what it accepts (the property tests read them).


class StoreOnce(argparse.Action):
    """``store``, but a flag given twice is a usage error: ``--udp A --udp B`` silently kept
    the last one, which is not what someone writing both meant (``action=StoreOnce``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        given = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in given:
            raise argparse.ArgumentError(self, "given twice: give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class ArgType:
    """Base of the argument types: ``kind`` names the family of values it accepts."""

    kind = "text"

    def __call__(self, text: str) -> Any:
        try:
            return self.convert(text)
        except (InvalidValueError, InvalidNameError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def convert(self, text: str) -> Any:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.kind


class IntArg(ArgType):
    """An integer from ``low`` to ``high`` (``validate.parse_int``)."""

    kind = "int"

    def __init__(self, what: str, low: int, high: int) -> None:
        self.what, self.low, self.high = what, low, high

    def convert(self, text: str) -> int:
        return validate.parse_int(text, self.what, self.low, self.high)


class FloatArg(ArgType):
    """A finite number in ``(low, high]``, or ``[low, high]`` with ``low_inclusive``."""

    kind = "float"

    def __init__(self, what: str, *, low: float = 0.0, high: float,
                 low_inclusive: bool = False) -> None:  # fmt: skip
        self.what, self.low, self.high, self.low_inclusive = what, low, high, low_inclusive

    def convert(self, text: str) -> float:
        return validate.parse_float(text, self.what, low=self.low, high=self.high,
                                    low_inclusive=self.low_inclusive)  # fmt: skip


class UserArg(ArgType):
    """``USER[:GROUP]`` to become once the devices are open (``privileges.parse_identity``)."""

    kind = "user"

    def convert(self, text: str) -> Any:
        from tapengine.privileges import parse_identity

        return parse_identity(text)


def add_user_option(parser: argparse.ArgumentParser) -> None:
    """``--user USER[:GROUP]``: drop every privilege once the devices are open."""
    parser.add_argument(
        "--user", type=UserArg(), metavar="USER[:GROUP]",
        help="once the devices are open, become USER (and GROUP, else USER's group) with no "
             "capabilities left and no_new_privs: nothing that follows needs root",
    )  # fmt: skip


def become(identity: Any) -> None:
    """Drop privileges to ``identity`` (a ``--user`` value); nothing when it is None."""
    if identity is not None:
        from tapengine.privileges import drop_privileges

        drop_privileges(identity)


class IfnameArg(ArgType):
    """An interface name the kernel accepts (at most 15 bytes, no '/', ':', blanks)."""

    kind = "ifname"

    def convert(self, text: str) -> str:
        return validate.check_ifname(text)


class NetnsArg(ArgType):
    """A name for a file in /run/netns."""

    kind = "netns"

    def convert(self, text: str) -> str:
        return validate.check_netns_name(text)


class IdArg(ArgType):
    """A user or group: a name known to this system, or a number from 0 to 2^32-2."""

    kind = "id"

    def __init__(self, what: str) -> None:
        self.what = what  # "user" or "group"

    def convert(self, text: str) -> int:
        if re.fullmatch(r"\s*[+-]?[0-9]+\s*", text) or len(text) > validate.NETNS_NAME_MAX:
            return validate.parse_int(text, f"{self.what} id", 0, validate.MAX_ID)
        try:
            if self.what == "user":
                return pwd.getpwnam(text).pw_uid
            return grp.getgrnam(text).gr_gid
        except (KeyError, ValueError, UnicodeEncodeError):
            raise InvalidValueError(
                f"no {self.what} named {validate.quote(text)} (give a name from "
                f"/etc/{'passwd' if self.what == 'user' else 'group'} or a number)"
            ) from None


class MacArg(ArgType):
    """A unicast MAC address, ``02:00:00:00:00:01``."""

    kind = "mac"

    def convert(self, text: str) -> str:
        return validate.check_mac(text)


class CidrArg(ArgType):
    """An address with prefix length, ``10.77.0.1/24`` or ``fd77::1/64`` (no scope)."""

    kind = "cidr"

    def convert(self, text: str) -> str:
        validate.check_cidr(text)
        return text


class EndpointArg(ArgType):
    """An IP address and port, ``10.77.0.1:4789`` or ``[fd77::1]:4789``
    (``validate.check_endpoint``); port 0 too with ``allow_zero_port`` (the kernel picks one)."""

    kind = "endpoint"

    def __init__(self, what: str, *, allow_zero_port: bool = False) -> None:
        self.what, self.allow_zero_port = what, allow_zero_port

    def convert(self, text: str) -> tuple[str, int]:
        return validate.check_endpoint(text, self.what, allow_zero_port=self.allow_zero_port)


class PrefixArg(ArgType):
    """A name prefix of at least ``min_length`` characters."""

    kind = "prefix"

    def __init__(self, min_length: int = 2) -> None:
        self.min_length = min_length

    def convert(self, text: str) -> str:
        return validate.check_prefix(text, min_length=self.min_length)


class PathArg(ArgType):
    """A file name: not empty, no NUL byte, valid UTF-8 (the file itself is read later)."""

    kind = "path"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, text: str) -> str:
        problem = None
        if not text:
            problem = "it is empty"
        elif "\0" in text:
            problem = "it contains a NUL byte"
        else:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                problem = "it is not valid UTF-8"
        if problem:
            raise InvalidValueError(f"invalid {self.what} path {validate.quote(text)}: {problem}")
        return text


class ParsedArg(ArgType):
    """Text read by a parser of tapengine (a rate, a size mix); its ValueError is the message."""

    def __init__(self, kind: str, parse: Callable[[str], Any]) -> None:
        self.kind, self.parse = kind, parse

    def convert(self, text: str) -> Any:
        try:
            return self.parse(text)
        except ValueError as err:
            raise InvalidValueError(str(err)) from None


# -- common options --------------------------------------------------------------------------


def add_netns_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--netns NAME``: the namespace the command works in."""
    parser.add_argument("--netns", type=NetnsArg(), metavar="NAME", help=help)


def add_json_option(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    """``--json``: machine-readable output on stdout."""
    parser.add_argument("--json", action="store_true", help=help)


def add_io_option(parser: argparse.ArgumentParser, *, auto: bool = False) -> None:
    """``--io readv|uring``: how batches reach the kernel; with ``auto`` also ``--io auto``, the
    default then: io_uring where the kernel allows it, else readv."""
    if auto:
        parser.add_argument(
            "--io", choices=("auto", "readv", "uring"), default="auto",
            help="one io_uring_enter per batch (uring) or one system call per packet (readv); "
                 "auto, the default: uring where the kernel allows it, else readv",
        )  # fmt: skip
        return
    parser.add_argument(
        "--io", choices=("readv", "uring"), default="readv",
        help="one system call per packet (readv/writev, the default) or one io_uring_enter per "
             "batch (uring)",
    )  # fmt: skip


def open_io(choice: str, entries: int = 256) -> contextlib.AbstractContextManager[Any]:
    """A context manager giving the ``UringIO`` for ``--io uring``, or ``None`` for readv."""
    if choice != "uring":
        return contextlib.nullcontext()
    from tapengine._uring import UringIO, available, unavailable_reason

    if not available():
        raise CommandError(f"io_uring is not usable here: {unavailable_reason()}; use --io readv")
    return UringIO(entries)


# -- output ----------------------------------------------------------------------------------


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def run_with_progress(work: Callable[[], Any], stop: Callable[[], None],
                      progress: Callable[[], str], *, show: bool) -> tuple[Any, bool]:
    """Run ``work`` in a thread (it releases the GIL); print ``progress()`` on stderr meanwhile.

    A stop signal (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT) calls ``stop`` and waits for ``work`` to
    return. Returns ``(result, interrupted)``; an exception raised by ``work`` is raised here.
    """
    from tapengine.signals import stop_signals

    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["result"] = work()
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err

    worker = threading.Thread(target=body, name="tapengine-traffic", daemon=True)
    with stop_signals("flag") as caught:
        worker.start()
        while worker.is_alive():
            if caught.event.wait(PROGRESS_INTERVAL):
                stop()
                worker.join()
                break
            if show and worker.is_alive():
                print(f"\r\033[K{progress()}", end="", file=sys.stderr, flush=True)
    if show:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result"), caught.first is not None
