"""The generator alone into a tap, against a plain Python ``os.write`` loop and against trafgen.

    .venv/bin/python bench/gen_vs_baselines.py [--rounds 11] [--packets 200000] [--sizes 64,1518]
                                               [--cpu 1] [--json]

One tap, up, alone in a private namespace (``te<hex>``, IPv6 off): what is written into it enters
that namespace's stack and is dropped there (the destination MAC is nobody's). Everything runs
pinned to one CPU. For each frame size, every round runs, in this order:

* ``gen``: ``Generator.send(tap, count=N)`` flat out (templates patched in place per packet:
  sequence number, timestamp, checksum; batches of 32 written without the GIL);
* ``python``: ``os.write(fd, frame)`` in a loop over 1024 prebuilt frames from the same
  generator (nothing patched: the most favourable Python loop);
* ``python+patch``: the same loop doing the generator's per-packet work in Python: sequence
  number, CLOCK_MONOTONIC timestamp and an incrementally updated UDP checksum, then ``os.write``;
* ``trafgen``: ``trafgen --dev VETH --cpus 1 --num N`` sending the same frame (if installed).

trafgen cannot write into a tap's fd: it sends through a packet socket, which would push frames
*out* of the tap toward its fd (and block once the idle fd's queue holds 1000 of them). So it
sends into one end of a veth pair in the same namespace instead: its frames enter the namespace's
stack on the other end and are dropped there, like ours. The two paths are alike, not identical
(a tap write builds the skb from user memory; trafgen's TX ring skips the qdisc).

Prints the median packets/s of each side, the spread (min..max) and the ratio gen/python.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from pyroute2 import IPRoute, netns

from tapengine import PacketRing, TunQueue, open_queue
from tapengine._uring import UringIO
from tapengine._uring import available as uring_available
from tapengine.traffic import GenConfig, SizeMix

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(fd: int) -> Iterator[None]:
    """The calling thread inside the namespace ``fd`` for the block."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


@contextlib.contextmanager
def lone_tap() -> Iterator[tuple[TunQueue, int, str]]:
    """A tap (up) and a veth pair (up) alone in a fresh namespace, held by an fd.

    The namespace is used through that fd, not its name, so it lives as long as we need it.
    """
    prefix = "te" + secrets.token_hex(3)
    name = prefix + "ns"
    netns.create(name)
    try:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with inside(fd):
                for knob in ("all", "default"):
                    with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as file:
                        file.write("1")
                queue = open_queue(prefix + "g", "tap")
            with queue:
                with inside(fd), IPRoute() as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname=queue.name)[0], state="up")
                    ipr.link("add", ifname=prefix + "v0", kind="veth", peer=prefix + "v1")
                    for end in ("v0", "v1"):
                        index = ipr.link_lookup(ifname=prefix + end)[0]
                        ipr.link("set", index=index, state="up")
                yield queue, fd, prefix + "v0"
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            netns.remove(name)


def run_gen(queue: TunQueue, size: int, packets: int, io: UringIO | None = None) -> float:
    """The generator flat out; with ``io``, batches of 64 through io_uring."""
    gen = GenConfig(sizes=SizeMix.fixed(size), batch=64 if io else 32).generator()
    start = time.perf_counter()
    sent = gen.send(queue, count=packets, io=io)
    elapsed = time.perf_counter() - start
    assert sent == packets
    return packets / elapsed


def frames_of(size: int, count: int = 1024) -> list[bytes]:
    gen = GenConfig(sizes=SizeMix.fixed(size)).generator()
    ring = PacketRing(count, 2048)
    gen.fill(ring, count)
    return [ring.packet(i) for i in range(count)]


def run_python(queue: TunQueue, frames: list[bytes], packets: int) -> float:
    write, fd, mask = os.write, queue.fileno(), len(frames) - 1
    start = time.perf_counter()
    for i in range(packets):
        write(fd, frames[i & mask])
    return packets / (time.perf_counter() - start)


def run_python_patching(queue: TunQueue, frames: list[bytes], packets: int) -> float:
    """A Python generator doing what ``Generator`` does per packet (one flow, IPv4 on a tap)."""
    seq_off, csum_off = 14 + 20 + 8 + 4, 14 + 20 + 6
    buffers = [bytearray(frame) for frame in frames]
    bases = []
    for buffer in buffers:
        # the checksum without the sequence and timestamp words: subtract them (ones' complement)
        words = struct.unpack_from(">6H", buffer, seq_off)
        total = (~struct.unpack_from(">H", buffer, csum_off)[0]) & 0xFFFF
        total += sum((~word) & 0xFFFF for word in words)
        bases.append(total)
    write, fd, mask, now = os.write, queue.fileno(), len(frames) - 1, time.monotonic_ns
    pack_into = struct.pack_into
    start = time.perf_counter()
    for seq in range(packets):
        slot = seq & mask
        buffer = buffers[slot]
        stamp = now()
        pack_into(">IQ", buffer, seq_off, seq & 0xFFFFFFFF, stamp)
        total = (bases[slot] + (seq >> 16 & 0xFFFF) + (seq & 0xFFFF) + (stamp >> 48)
                 + (stamp >> 32 & 0xFFFF) + (stamp >> 16 & 0xFFFF) + (stamp & 0xFFFF))
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        pack_into(">H", buffer, csum_off, ((~total) & 0xFFFF) or 0xFFFF)
        write(fd, buffer)
    return packets / (time.perf_counter() - start)


def run_trafgen(veth: str, namespace: int, frame: bytes, packets: int, cpu: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as config:
        config.write("{ " + ", ".join(f"0x{byte:02x}" for byte in frame) + " }\n")
        config.flush()
        command = ["taskset", "-c", str(cpu), "trafgen",
                   "--dev", veth, "--conf", config.name, "--cpus", "1",
                   "--num", str(packets), "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                preexec_fn=lambda: setns(namespace))
        if result.returncode:
            raise RuntimeError(f"trafgen failed ({result.returncode}): {result.stderr.strip()}")
        wall = time.perf_counter() - start
    # trafgen reports "N packets outgoing"; time it by wall clock (includes its start-up)
    match = re.search(r"(\d+) packets outgoing", result.stdout + result.stderr)
    sent = int(match.group(1)) if match else packets
    return sent / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--sizes", default="64,1518", help="frame sizes with FCS")
    parser.add_argument("--cpu", type=int, default=1, help="the one CPU everything runs on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # a SIGTERM (timeout, CI) unwinds through the finally blocks: the namespace is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {args.cpu})
    have_trafgen = shutil.which("trafgen") is not None
    results = {}
    uring = UringIO(64) if uring_available() else None
    with lone_tap() as (queue, namespace, veth):
        for size in (int(text) for text in args.sizes.split(",")):
            frames = frames_of(size)
            samples: dict[str, list[float]] = {
                "gen": [], "gen+uring": [], "python": [], "python+patch": [], "trafgen": []}
            for _ in range(args.rounds):
                samples["gen"].append(run_gen(queue, size, args.packets))
                if uring is not None:
                    samples["gen+uring"].append(run_gen(queue, size, args.packets, uring))
                samples["python"].append(run_python(queue, frames, args.packets))
                samples["python+patch"].append(run_python_patching(queue, frames, args.packets))
                if have_trafgen:
                    samples["trafgen"].append(
                        run_trafgen(veth, namespace, frames[0], args.packets, args.cpu))
            medians = {key: statistics.median(v) for key, v in samples.items() if v}
            results[size] = {
                "median_pps": medians,
                "spread_pps": {key: [min(v), max(v)] for key, v in samples.items() if v},
                "ratio_gen_python": medians["gen"] / medians["python"],
                "ratio_gen_uring_python": (
                    medians["gen+uring"] / medians["python"] if uring is not None else None),
                "ratio_gen_python_patching": medians["gen"] / medians["python+patch"],
                "ratio_gen_trafgen": medians["gen"] / medians["trafgen"] if have_trafgen else None,
            }
    if args.json:
        json.dump({"machine": platform.uname()._asdict(), "args": vars(args),
                   "results": results}, sys.stdout, indent=2)  # fmt: skip
        print()
        return 0
    print(f"{'size':>5} {'gen pps':>11} {'python pps':>11} {'py+patch pps':>12} "
          f"{'trafgen pps':>12} {'gen/python':>10} {'gen/py+patch':>12} {'gen/trafgen':>11}")
    for size, r in results.items():
        m, spread = r["median_pps"], r["spread_pps"]
        trafgen = f"{m['trafgen']:>12,.0f}" if "trafgen" in m else f"{'-':>12}"
        ratio_t = f"{r['ratio_gen_trafgen']:>11.2f}" if r["ratio_gen_trafgen"] else f"{'-':>11}"
        print(f"{size:>5} {m['gen']:>11,.0f} {m['python']:>11,.0f} {m['python+patch']:>12,.0f} "
              f"{trafgen} {r['ratio_gen_python']:>10.2f} {r['ratio_gen_python_patching']:>12.2f}"
              f" {ratio_t}")  # fmt: skip
        if r["ratio_gen_uring_python"]:
            print(f"      gen+uring {m['gen+uring']:,.0f} pps: "
                  f"{r['ratio_gen_uring_python']:.2f}x the python loop")
        print("      spread: " + ", ".join(
            f"{key} {low:,.0f}..{high:,.0f}" for key, (low, high) in spread.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
