"""Micro-benchmark of software segmentation: one 64 KiB TCPv4 superframe into 1448-byte segments.

    .venv/bin/python -m pytest bench/test_bench_gso.py --benchmark-only \
        --benchmark-columns=median,iqr,ops,rounds

No privilege needed. Rows (all per superframe of 65,160 payload bytes = 45 segments):

- ``test_segment_full_csum``: ``segment_batch`` ring to ring, every checksum computed (what a
  port without offloads gets);
- ``test_segment_partial_csum``: the same, L4 checksums left partial (a port with CSUM only);
- ``test_memcpy_reference``: one numpy copy of the same 65,214 bytes: the floor any copying
  segmenter sits on;
- ``test_python_slicing_reference``: header + payload slices joined in Python, no field or
  checksum fixed: what "just slice it in Python" costs.

Each row records segments/s and Gbit/s of payload in ``extra_info`` (``--benchmark-json``).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tapengine import PacketRing
from tapengine import _gso as gso

MSS = 1448
SEGMENTS = 45
PAYLOAD = MSS * SEGMENTS                   # 65,160 bytes
HEADERS = 14 + 20 + 32                     # Ethernet, IPv4, TCP with timestamps


def _superframe() -> tuple[bytes, bytes]:
    payload = np.random.default_rng(5).integers(0, 256, PAYLOAD, dtype=np.uint8).tobytes()
    pkt = (Ether(src="02:77:00:00:00:01", dst="02:77:00:00:00:02") /
           IP(src="10.77.0.1", dst="10.77.0.2", id=1, flags="DF") /
           TCP(sport=40000, dport=5001, seq=1, ack=1, flags="PA",
               options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) /
           Raw(payload))
    frame = bytes(pkt)
    assert len(frame) == HEADERS + PAYLOAD
    header = struct.pack("=BBHHHH", gso.NEEDS_CSUM, gso.GSO_TCPV4, HEADERS, MSS, 34, 16)
    return header, frame


def _record(benchmark) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info["segments_per_s"] = round(SEGMENTS / median)
    benchmark.extra_info["payload_gbit_per_s"] = round(PAYLOAD * 8 / median / 1e9, 2)


@pytest.fixture(scope="module")
def rings():
    header, frame = _superframe()
    src = PacketRing(1, 65536 + 128)
    src.push(frame, header)
    dst = PacketRing(64, 2048)
    return src, dst


@pytest.mark.parametrize("partial", [False, True], ids=["full_csum", "partial_csum"])
def test_segment(benchmark, rings, partial) -> None:
    src, dst = rings

    def run() -> None:
        dst.clear()
        gso.segment_batch(src, 0, 1, dst, partial_csum=partial)

    benchmark(run)
    assert dst.pending == SEGMENTS
    _record(benchmark)


def test_memcpy_reference(benchmark) -> None:
    _, frame = _superframe()
    source = np.frombuffer(frame, dtype=np.uint8)
    target = np.empty_like(source)
    benchmark(np.copyto, target, source)
    _record(benchmark)


def test_python_slicing_reference(benchmark) -> None:
    _, frame = _superframe()

    def run() -> list[bytes]:
        head = frame[:HEADERS]
        return [head + frame[off:off + MSS] for off in range(HEADERS, len(frame), MSS)]

    assert len(benchmark(run)) == SEGMENTS
    _record(benchmark)
