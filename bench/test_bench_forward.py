"""The forwarder loop: frames through a tapengine wire, beside a kernel veth pair and the naive
Python forwarder, measured in the same run.

    make bench   # or: .venv/bin/python -m pytest bench/test_bench_forward.py --benchmark-only

The labs are ``tapengine bench``'s (``tapengine.benchrun.labs``): per path a private namespace
where tap ``g`` and tap ``s`` hang on two kernel bridges and only the middle differs::

    engine: g -> bridge 1 -> tap a => Engine (wire, C forwarder thread) => tap b -> bridge 2 -> s
    kernel: g -> bridge 1 -> veth  ==  veth pair                        == veth  -> bridge 2 -> s
    naive:  g -> bridge 1 -> tap a => tapengine.naive_forward            => tap b -> bridge 2 -> s

One round writes BATCH frames into ``g`` with ``send_batch`` and reads all of them back from ``s``
with ``recv_batch`` (a lost frame fails the row instead of hanging it). Compare the three rows of
one run: everything but the middle is the same, so the differences are the forwarders'.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest

from tap_pair import drain, ethernet_frame
from tapengine import PacketRing, recv_batch, send_batch
from tapengine.benchrun import FrameLab, Selection, labs

BATCH = 64
PATHS = ("engine", "kernel", "naive")


@pytest.fixture(scope="module")
def built() -> Iterator[dict[str, FrameLab]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create taps and namespaces")
    with labs(Selection(PATHS, ())) as (frames, _):
        yield frames


def round_trip(lab: FrameLab, tx: PacketRing, rx: PacketRing, count: int) -> None:
    """``count`` frames into ``g``, all of them out of ``s`` (or TimeoutError after 2 s)."""
    sent = send_batch(lab.g, tx, 0, count)
    if sent != count:
        raise OSError(f"tap g took {sent} of {count} frames")
    got, deadline = 0, time.monotonic() + 2.0
    while got < count:
        n = recv_batch(lab.s, rx, count - got)
        rx.consume(n)
        got += n
        if not n and time.monotonic() > deadline:
            raise TimeoutError(f"{lab.path}: {got} of {count} frames came through")


@pytest.mark.parametrize("size", [64, 1500])
@pytest.mark.parametrize("path", PATHS)
def test_forward(benchmark, built: dict[str, FrameLab], path: str, size: int) -> None:
    lab = built[path]
    tx, rx = PacketRing(BATCH, 2048), PacketRing(BATCH, 2048)
    for seq in range(BATCH):
        tx.push(ethernet_frame(size - 4, seq))  # sizes with FCS, as tapengine bench counts them
    with contextlib.suppress(OSError):
        drain(lab.s)
    round_trip(lab, tx, rx, BATCH)
    if leftover := drain(lab.s):
        raise OSError(f"{leftover} unexpected frames on {path}'s sink tap")
    benchmark.extra_info["packets_per_round"] = BATCH
    benchmark.extra_info["path"] = path
    benchmark.pedantic(round_trip, args=(lab, tx, rx, BATCH), rounds=1000, warmup_rounds=50)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        benchmark.extra_info["median_pps"] = round(BATCH / stats.median)
