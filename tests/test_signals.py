"""``tapengine.signals``: the stop signals raise, wait for the end of a block, or only flag."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tapengine.signals import STOP_SIGNALS, Terminated, on_signal, stop_signals


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda sig: sig.name)
def test_raise_mode_raises_terminated_naming_the_signal(sig: signal.Signals) -> None:
    with pytest.raises(Terminated) as caught, stop_signals("raise"):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler interrupts it
    assert caught.value.signum == sig and sig.name in str(caught.value)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.exit_code == 128 + sig


def test_defer_mode_finishes_the_block_then_raises() -> None:
    finished = False
    with pytest.raises(Terminated) as caught, stop_signals("defer") as pending:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        finished = True
    assert finished and pending.signals == [signal.SIGHUP, signal.SIGTERM]
    assert caught.value.signum == signal.SIGHUP


def test_flag_mode_only_sets_the_event() -> None:
    with stop_signals("flag") as caught:
        os.kill(os.getpid(), signal.SIGQUIT)
        assert caught.event.wait(5)
    assert caught.first == signal.SIGQUIT


def test_the_previous_handlers_come_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGUSR1)}
    with stop_signals("flag"), on_signal(signal.SIGUSR1) as usr1:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert usr1.wait(5)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_outside_the_main_thread_nothing_is_installed() -> None:
    seen: list[object] = []

    def body() -> None:
        with stop_signals("raise") as caught:
            seen.append(caught.mode)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == ["raise"] and signal.getsignal(signal.SIGTERM) is before
