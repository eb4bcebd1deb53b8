"""The signals that end a tapengine command, handled in one place.

SIGINT (Ctrl-C), SIGTERM (``kill``), SIGHUP (the terminal closed) and SIGQUIT (Ctrl-\\) all mean
"stop now, but clean up first". ``stop_signals(mode)`` installs handlers for them while its block
runs and puts the old handlers back afterwards:

- ``"raise"``: the signal raises ``Terminated`` (a ``KeyboardInterrupt``) at once, so the
  ``finally`` blocks and context managers on the way out undo what was built;
- ``"defer"``: the signal is remembered and ``Terminated`` is raised when the block ends, so a
  teardown in the block is never cut short;
- ``"flag"``: the signal only sets ``caught.event`` and is recorded; nothing is raised, the code
  that polls the event decides (a forwarder prints its final stats).

Handlers can only be installed in the main thread; elsewhere the block runs without them.
This module imports nothing of tapengine (so every layer may use it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal

Mode = Literal["raise", "defer", "flag"]

#: The signals that stop a command: Ctrl-C, kill, a closed terminal, Ctrl-\.
STOP_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
)  # fmt: skip


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Terminated(KeyboardInterrupt):
    """A stop signal arrived; raised like Ctrl-C so the same cleanup paths handle every one.

    ``signum`` is the signal; ``exit_code`` the shell's convention for it (128 + signum).
    """

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class Caught:
    """What arrived while a ``stop_signals`` block ran."""

    mode: Mode
    signals: list[int] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    @property
    def first(self) -> int | None:
        """The first signal that arrived, or None."""
        return self.signals[0] if self.signals else None

    def raise_pending(self) -> None:
        """Raise ``Terminated`` for the first signal that arrived, if one did."""
        if self.signals:
            raise Terminated(self.signals[0])


@contextlib.contextmanager
def stop_signals(mode: Mode = "raise",
                 signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[Caught]:  # fmt: skip
    """Handle ``signals`` (default ``STOP_SIGNALS``) as ``mode`` says while the block runs.

    Nesting works: an inner block's handlers replace the outer ones until it ends.
    """
    if mode not in ("raise", "defer", "flag"):
        raise ValueError(f"mode must be 'raise', 'defer' or 'flag', not {mode!r}")
    caught = Caught(mode)
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        caught.signals.append(signum)
        caught.event.set()
        if mode == "raise":
            raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if mode == "defer":
        caught.raise_pending()


@contextlib.contextmanager
def on_signal(signum: int) -> Iterator[threading.Event]:
    """An event set each time ``signum`` arrives while the block runs (``SIGUSR1`` for a stats
    snapshot); the caller clears it. Outside the main thread the event is never set."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signum, lambda signum, frame: event.set())
    try:
        yield event
    finally:
        signal.signal(signum, previous)


__all__ = ["STOP_SIGNALS", "Caught", "Terminated", "on_signal", "signal_name", "stop_signals"]
