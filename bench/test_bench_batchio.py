"""Packets per second of recv_batch/send_batch on a tap pair, beside a plain os.read/os.write loop.

    make bench   # or: .venv/bin/python -m pytest bench/test_bench_batchio.py --benchmark-only

Each round sends BATCH frames into one tap and reads them back from the other (through a kernel
bridge in a private namespace). Compare the ``batched`` and ``plain`` rows of one run; for an
interleaved A/B ratio with medians, run ``bench/batchio_ratio.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tap_pair import (
    TapPair,
    batched_round_trip,
    make_rings,
    no_loss_check,
    plain_round_trip,
    tap_pair,
)

BATCH = 64


@pytest.fixture(scope="module")
def pair() -> Iterator[TapPair]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create taps and a namespace")
    with tap_pair() as created:
        yield created


@pytest.mark.parametrize("size", [64, 1500])
def test_batched(benchmark, pair: TapPair, size: int) -> None:
    tx, rx, _ = make_rings(size, BATCH)
    no_loss_check(pair, lambda: batched_round_trip(pair, tx, rx, BATCH))
    benchmark.extra_info["packets_per_round"] = BATCH
    benchmark.pedantic(batched_round_trip, args=(pair, tx, rx, BATCH), rounds=2000,
                       warmup_rounds=50)


@pytest.mark.parametrize("size", [64, 1500])
def test_plain(benchmark, pair: TapPair, size: int) -> None:
    _, _, frames = make_rings(size, BATCH)
    no_loss_check(pair, lambda: plain_round_trip(pair, frames, BATCH))
    benchmark.extra_info["packets_per_round"] = BATCH
    benchmark.pedantic(plain_round_trip, args=(pair, frames, BATCH), rounds=2000,
                       warmup_rounds=50)
