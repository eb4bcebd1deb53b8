"""Micro-benchmarks of the packet ring: the per-batch costs a Python hook pays.

    .venv/bin/python -m pytest bench/test_bench_ring.py --benchmark-only

No privilege needed. ``test_views`` is the cost of taking the zero-copy numpy views of a ring
(once per batch in a hook); ``test_push_64`` copies 64 frames in (what a generator written in
Python would pay), beside ``test_bytearray_64``, the same copies into a preallocated bytearray.
"""

from __future__ import annotations

import pytest

from tapengine import PacketRing

FRAME = bytes(range(64))


@pytest.fixture
def ring() -> PacketRing:
    return PacketRing(256, 2048)


def test_views(benchmark, ring: PacketRing) -> None:
    def views() -> None:
        frames, lengths, headers = ring.frames, ring.lengths, ring.headers
        del frames, lengths, headers

    benchmark(views)
    assert ring.exports == 0


def test_push_64(benchmark, ring: PacketRing) -> None:
    def push() -> None:
        for _ in range(64):
            ring.push(FRAME)
        ring.clear()

    benchmark(push)


def test_bytearray_64(benchmark) -> None:
    slab = bytearray(256 * 2048)
    lengths = [0] * 256

    def copy() -> None:
        for i in range(64):
            slab[i * 2048:i * 2048 + 64] = FRAME
            lengths[i] = 64

    benchmark(copy)


def test_swap_macs_256(benchmark, ring: PacketRing) -> None:
    """A numpy operation over a whole batch: swap source and destination MACs of 256 frames."""
    frames = ring.frames

    def swap() -> None:
        frames[:, 0:6], frames[:, 6:12] = frames[:, 6:12].copy(), frames[:, 0:6].copy()

    benchmark(swap)
