"""Run a program inside a named network namespace, without running iproute2's ``ip``.

    python -m tapengine.nsexec NETNS -- PROGRAM [ARGS...]

This process enters ``NETNS`` with ``setns(2)`` and replaces itself with ``PROGRAM`` (``execvp``):
the program keeps the pid its parent sees, so signals sent to it reach the program itself. It is
how tapengine starts the peers it measures against (iperf3, the naive forwarder). A fresh
interpreter has a single thread between the ``setns`` and the ``exec``; a ``preexec_fn`` run
after a fork of a harness that has forwarder and sink threads could not promise that.

Unlike iproute2's ``netns exec`` it neither remounts ``/sys`` nor binds ``/etc/netns/NETNS``: the
peers tapengine starts need only the network namespace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tapengine.netns import inside_netns
from tapengine.validate import check_netns_name

USAGE = "usage: python -m tapengine.nsexec NETNS -- PROGRAM [ARGS...]"


def nsexec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv (for ``subprocess``) that runs ``argv`` inside namespace ``netns``."""
    if not argv:
        raise ValueError("no program to run")
    return [sys.executable, "-m", "tapengine.nsexec", check_netns_name(netns), "--", *argv]


def main(argv: Sequence[str]) -> int:
    """Exec ``argv[2:]`` inside namespace ``argv[0]``; returns only on failure (one line on
    stderr; 2: bad usage, 1: cannot enter the namespace, 127/126: cannot run the program)."""
    if len(argv) < 3 or argv[1] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    netns, program = argv[0], list(argv[2:])
    try:
        with inside_netns(netns):
            try:
                os.execvp(program[0], program)  # does not return on success
            except OSError as err:
                print(f"tapengine.nsexec: cannot run {program[0]!r} in network namespace "
                      f"{netns!r}: {err.strerror or err}", file=sys.stderr)  # fmt: skip
                return 127 if isinstance(err, FileNotFoundError) else 126
    except (OSError, ValueError) as err:  # the namespace: missing, bad name, no privilege
        print(f"tapengine.nsexec: {err.strerror if isinstance(err, OSError) else err}",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
