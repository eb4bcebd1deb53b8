"""Interleaved A/B: a vnet tap read and written as one buffer (ring v2: the virtio-net header in
front of the frame, one read()/write() per packet) vs two iovecs (header, frame: readv/writev).

    .venv/bin/python bench/vnet_iovec.py [--rounds 21] [--packets 20000] [--size 64]

Issue 14's first lever. Both taps have IFF_VNET_HDR; ``send_batch`` writes 64 frames into tap A,
the kernel bridge (private namespace) floods them to tap B, ``recv_batch`` reads them back: a
write and a read per packet, each side timed with the same ring code, only the syscall shape
switched (``tapengine._batchio._measure_two_iovecs``, a switch that existed for this measurement
only). A B alternate, then B A; medians of packets/s and the median per-round ratio. Needs root.

One buffer won (bench/RESULTS.md) and is the only code path now: the switch is gone. To rerun,
check out the commit that added this script (``git log --diff-filter=A -- bench/vnet_iovec.py``)
and build it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from tap_pair import TapPair, make_rings, tap_pair
from tapengine import PacketRing, recv_batch, send_batch

try:
    from tapengine._batchio import _measure_two_iovecs  # type: ignore[attr-defined]
except ImportError:
    sys.exit("the two-iovec switch is gone (one buffer won): run this script at the commit that "
             "added it, see its docstring")

BATCH = 64


def rate(pair: TapPair, tx: PacketRing, rx: PacketRing, packets: int,
         two: bool) -> tuple[float, float]:
    """Packets/s (wall clock) and CPU ns per packet (this process: user + system)."""
    _measure_two_iovecs(two)
    rounds = packets // BATCH
    cpu = time.process_time_ns()
    start = time.perf_counter()
    for _ in range(rounds):
        sent = send_batch(pair.a, tx, 0, BATCH, vnet_hdr=True)
        assert sent == BATCH, f"tap accepted {sent} of {BATCH}"
        got = 0
        while got < BATCH:
            n = recv_batch(pair.b, rx, BATCH - got, vnet_hdr=True)
            rx.consume(n)
            got += n
    elapsed = time.perf_counter() - start
    cpu = time.process_time_ns() - cpu
    _measure_two_iovecs(False)
    return rounds * BATCH / elapsed, cpu / (rounds * BATCH)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {"one": [], "two": []}
    cpu: dict[str, list[float]] = {"one": [], "two": []}
    ratios: list[float] = []
    with tap_pair(vnet_hdr=True) as pair:
        tx, rx, _ = make_rings(args.size, BATCH)
        for r in range(args.rounds):
            order = ("one", "two") if r % 2 == 0 else ("two", "one")
            got = {side: rate(pair, tx, rx, args.packets, side == "two") for side in order}
            for side in order:
                rates[side].append(got[side][0])
                cpu[side].append(got[side][1])
            ratios.append(got["one"][0] / got["two"][0])
        assert rx.truncated == 0
    one, two = statistics.median(rates["one"]), statistics.median(rates["two"])
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, load {load_before} -> "
          f"{os.getloadavg()}; {args.rounds} rounds of {args.packets} x {args.size}-byte frames")
    names = {"one": "one buffer (read/write):  ", "two": "two iovecs (readv/writev):"}
    for side, name in names.items():
        print(f"{name} {statistics.median(rates[side]):10,.0f} pkt/s "
              f"({min(rates[side]):,.0f}..{max(rates[side]):,.0f}), "
              f"{statistics.median(cpu[side]):,.0f} CPU ns/pkt")
    print(f"ratio of medians {one / two:.3f}, median per-round ratio "
          f"{statistics.median(ratios):.3f}, CPU per packet two/one "
          f"{statistics.median(cpu['two']) / statistics.median(cpu['one']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
