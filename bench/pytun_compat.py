"""Interleaved A/B: tapengine.compat.pytun against python-pytun, a packet at a time and in batches.

    sudo .venv/bin/python bench/pytun_compat.py [--rounds 41] [--packets 400] [--json]

Creates its own network namespace (removed afterwards) and runs itself inside it, where one tun
per module (``IFF_TUN | IFF_NO_PI``, a /32 with a peer) is read and written alternately,
A B A B:

- read: the kernel queues ``--packets`` UDP datagrams toward the tun's peer (not timed), then
  the library reads them back, ``read(2048)`` each (and ``read_batch(2048, 64)`` for the batch
  row, against pytun's ``read`` loop);
- write: ``write`` of ``--packets`` IPv4/UDP datagrams to a UDP socket bound in the namespace
  (drained between runs, not timed).

Prints the median ns per packet of each side with its spread, and the median (with quartiles) of
the per-round ratios pytun / compat (above 1: compat is faster), which a load that shifts between
rounds disturbs less than a ratio of medians; /proc/loadavg at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SIZE = 2048
BATCH = 64
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in Python's socket module
PAYLOAD = b"p" * 18  # a 46-byte IPv4 packet: the per-call cost shows, not the copy


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = (sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
           + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload)  # fmt: skip
    header = bytearray(b"\x45\x00" + (20 + len(udp)).to_bytes(2, "big") + b"\0\1\0\0\x40\x11\0\0"
                       + socket.inet_aton(src) + socket.inet_aton(dst))  # fmt: skip
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, 20, 2))
    total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~(total + (total >> 16)) & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + udp


class Side:
    """One library's tun in the namespace, the socket that fills it and the one it writes to."""

    def __init__(self, module: Any, index: int) -> None:
        self.dev = module.TunTapDevice(name=f"bt{index}", flags=module.IFF_TUN | module.IFF_NO_PI)
        self.local, self.peer = f"10.77.{index}.1", f"10.77.{index}.2"
        self.dev.addr, self.dev.dstaddr = self.local, self.peer
        self.dev.up()
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind((self.local, 4000))
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
        self.receiver.bind((self.local, 5000))
        self.receiver.setblocking(False)
        self.packet = ipv4_udp(self.peer, self.local, 6000, 5000, PAYLOAD)

    def fill(self, count: int) -> None:
        for _ in range(count):
            self.sender.sendto(PAYLOAD, (self.peer, 9))

    def drain_receiver(self) -> None:
        while True:
            try:
                self.receiver.recv(64)
            except BlockingIOError:
                return


def time_reads(side: Side, count: int) -> float:
    side.fill(count)
    read = side.dev.read
    start = time.perf_counter_ns()
    for _ in range(count):
        read(SIZE)
    return (time.perf_counter_ns() - start) / count


def time_batches(side: Side, count: int) -> float:
    side.fill(count)
    read_batch = side.dev.read_batch
    got = 0
    start = time.perf_counter_ns()
    while got < count:
        got += len(read_batch(SIZE, BATCH))
    elapsed = time.perf_counter_ns() - start
    assert got == count, got
    return elapsed / count


def time_writes(side: Side, count: int) -> float:
    write, packet = side.dev.write, side.packet
    start = time.perf_counter_ns()
    for _ in range(count):
        write(packet)
    elapsed = time.perf_counter_ns() - start
    side.drain_receiver()
    return elapsed / count


def inside(rounds: int, packets: int) -> dict[str, Any]:
    """The measurement, in the namespace: rows of interleaved (pytun, compat) samples."""
    import pytun

    import tapengine.compat.pytun as compat

    for conf in ("all", "default"):  # no IPv6 packets (MLD, solicitations) among those timed
        with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
            f.write("1")
    ref, ours = Side(pytun, 0), Side(compat, 1)
    rows: dict[str, tuple[Callable[[Side, int], float], Callable[[Side, int], float]]] = {
        "read (one packet a call)": (time_reads, time_reads),
        "read_batch vs pytun's read loop": (time_reads, time_batches),
        "write (one packet a call)": (time_writes, time_writes),
    }
    for measure_ref, measure_ours in rows.values():  # warm-up: neither side is timed cold
        measure_ref(ref, packets)
        measure_ours(ours, packets)
    load = [loadavg()]
    results = {}
    for row, (measure_ref, measure_ours) in rows.items():
        samples: dict[str, list[float]] = {"pytun": [], "compat": []}
        for round_ in range(rounds):  # A B, then B A: neither side always runs first
            pair = [("pytun", measure_ref, ref), ("compat", measure_ours, ours)]
            for side, measure, where in pair if round_ % 2 == 0 else pair[::-1]:
                samples[side].append(measure(where, packets))
        medians = {side: statistics.median(values) for side, values in samples.items()}
        paired = [a / b for a, b in zip(samples["pytun"], samples["compat"], strict=True)]
        results[row] = {
            "pytun_ns": medians["pytun"], "compat_ns": medians["compat"],
            "pytun_spread": [min(samples["pytun"]), max(samples["pytun"])],
            "compat_spread": [min(samples["compat"]), max(samples["compat"])],
            "ratio": statistics.median(paired),
            "ratio_quartiles": statistics.quantiles(paired, n=4)[::2],
        }  # fmt: skip
    load.append(loadavg())
    return {"rows": results, "loadavg": load, "rounds": rounds, "packets": packets}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--packets", type=int, default=400, help="per run (the tun queues 500)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        json.dump(inside(args.rounds, args.packets), sys.stdout)
        return 0

    from tapengine.netns import create_netns
    from tapengine.nsexec import nsexec_argv

    argv = [sys.executable, __file__, "--inside", "--rounds", str(args.rounds),
            "--packets", str(args.packets)]  # fmt: skip
    with create_netns("te" + secrets.token_hex(3) + "pt") as netns:
        result = subprocess.run(nsexec_argv(netns.name, argv), capture_output=True, text=True,
                                check=False)  # fmt: skip
    if result.returncode != 0:
        print(result.stderr, end="", file=sys.stderr)
        return 1
    out = result.stdout
    report = json.loads(out) | {"machine": platform.uname()._asdict(),
                                "python": platform.python_version()}  # fmt: skip
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.packets} packets a run, {args.rounds} rounds interleaved, "
          f"loadavg {report['loadavg'][0]} -> {report['loadavg'][1]}")  # fmt: skip
    print(f"{'':34} {'pytun ns/pkt':>16} {'compat ns/pkt':>16} {'ratio (quartiles)':>18}")
    for row, r in report["rows"].items():
        ref, ours = r["pytun_spread"], r["compat_spread"]
        print(f"{row:34} {r['pytun_ns']:6.0f} ({ref[0]:.0f}..{ref[1]:.0f})"
              f" {r['compat_ns']:6.0f} ({ours[0]:.0f}..{ours[1]:.0f}) {r['ratio']:5.2f}x"
              f" ({r['ratio_quartiles'][0]:.2f}..{r['ratio_quartiles'][1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
