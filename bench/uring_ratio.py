"""Interleaved A/B/C: io_uring vs readv/writev vs a plain Python loop, on taps.

    .venv/bin/python bench/uring_ratio.py [--rounds 15] [--packets 20000] [--send-packets 200000]
                                          [--batch 64] [--sizes 64,1500] [--cpu 1] [--json]
                                          [--only pair,send,null]

Three scenarios, each frame size, every round running A, B and C back to back (A B C A B C ...):

* ``pair``: ``--packets`` frames per run through a tap pair (tap a -> kernel bridge in a private
  namespace -> tap b, as in ``bench/tap_pair.py``) in batches of ``--batch``: ``uring`` =
  ``UringIO.send_batch`` + ``UringIO.recv_batch``; ``readv`` = ``send_batch`` + ``recv_batch``
  (tapengine._batchio); ``python`` = ``os.write`` + ``os.read`` loops.
* ``send``: the generator's case, writes alone: ``--send-packets`` prebuilt frames written into one
  tap (up, alone in a private namespace, IPv6 off: the frames enter its stack and are dropped),
  ``--batch`` per call, by each of the three.
* ``null``: the same writes into ``/dev/null``: what the syscall path costs with no tap behind it.

Everything runs pinned to ``--cpu``. Prints medians (packets/s), the spread (min..max), and the
ratios uring/readv and uring/python of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator

from pyroute2 import IPRoute, netns

from tap_pair import drain, ethernet_frame
from tapengine import PacketRing, TunQueue, open_queue, recv_batch, send_batch
from tapengine._uring import UringIO, unavailable_reason

SIDES = ["uring", "readv", "python"]


def tx_ring(size: int, batch: int) -> tuple[PacketRing, list[bytes]]:
    frames = [ethernet_frame(size, i) for i in range(batch)]
    ring = PacketRing(batch, 2048)
    for frame in frames:
        ring.push(frame)
    return ring, frames


def pair_run(side: str, pair: list[TunQueue], io: UringIO, size: int, packets: int,
             batch: int) -> float:
    tx, frames = tx_ring(size, batch)
    rx = PacketRing(batch, 2048)
    rounds = packets // batch
    fd_a, fd_b = pair[0].fileno(), pair[1].fileno()
    write, read = os.write, os.read
    if side == "uring":
        send, recv = io.send_batch, io.recv_batch
    else:
        send, recv = send_batch, recv_batch
    start = time.perf_counter()
    for _ in range(rounds):
        if side == "python":
            for frame in frames:
                write(fd_a, frame)
            got = 0
            while got < batch:
                try:
                    read(fd_b, 2048)
                    got += 1
                except BlockingIOError:
                    pass
            continue
        sent = send(fd_a, tx, 0, batch)
        assert sent == batch, f"tap accepted {sent} of {batch}"
        got = 0
        while got < batch:
            n = recv(fd_b, rx, batch - got)
            rx.consume(n)
            got += n
    return rounds * batch / (time.perf_counter() - start)


def send_run(side: str, fd: int, io: UringIO, size: int, packets: int, batch: int) -> float:
    tx, frames = tx_ring(size, batch)
    rounds = packets // batch
    write = os.write
    send = io.send_batch if side.startswith("uring") else send_batch
    io._link_writes = side != "uring-nolink"  # benchmarks only: see pyx/uring.pxd
    start = time.perf_counter()
    if side == "python":
        for _ in range(rounds):
            for frame in frames:
                write(fd, frame)
    else:
        for _ in range(rounds):
            sent = send(fd, tx, 0, batch)
            assert sent == batch, f"accepted {sent} of {batch}"
    return rounds * batch / (time.perf_counter() - start)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def _inside(fd: int) -> Iterator[None]:
    """The calling thread inside the namespace ``fd`` for the block."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


@contextlib.contextmanager
def lab(tap_count: int) -> Iterator[list[TunQueue]]:
    """``tap_count`` taps opened here, up in a fresh namespace ``te<hex>ns`` (IPv6 and IGMP
    reports off); two taps are joined by a bridge. The namespace is held by an fd and used only
    through it, so it lives exactly as long as this block whatever happens to its name."""
    prefix = "te" + secrets.token_hex(3)
    name = prefix + "ns"
    netns.create(name)
    try:
        nsfd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        with contextlib.suppress(FileNotFoundError):
            netns.remove(name)      # from here on the namespace is ours alone, through nsfd
    try:
        with contextlib.ExitStack() as stack:
            queues = [stack.enter_context(open_queue(prefix + "ab"[i], "tap"))
                      for i in range(tap_count)]
            with IPRoute() as ipr:
                for queue in queues:
                    ipr.link("set", index=ipr.link_lookup(ifname=queue.name)[0], net_ns_fd=nsfd)
            with _inside(nsfd):
                for knob in ("ipv6/conf/all/disable_ipv6", "ipv6/conf/default/disable_ipv6"):
                    with open(f"/proc/sys/net/{knob}", "w") as file:
                        file.write("1")
                with open("/proc/sys/net/ipv4/igmp_link_local_mcast_reports", "w") as file:
                    file.write("0")
                with IPRoute() as ipr:
                    bridge = None
                    if tap_count == 2:
                        ipr.link("add", ifname=prefix + "br", kind="bridge", br_stp_state=0)
                        (bridge,) = ipr.link_lookup(ifname=prefix + "br")
                    for queue in queues:
                        (index,) = ipr.link_lookup(ifname=queue.name)
                        if bridge is not None:
                            ipr.link("set", index=index, master=bridge)
                        ipr.link("set", index=index, state="up")
                    if bridge is not None:
                        ipr.link("set", index=bridge, state="up")
            time.sleep(0.05)
            for queue in queues:
                drain(queue)
            yield queues
    finally:
        os.close(nsfd)              # the last reference: the kernel removes it and its links


def interleave(rounds: int, run: Callable[[str], float], sides: list[str]) -> dict[str, object]:
    samples: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side in sides:
            samples[side].append(run(side))
    medians = {side: statistics.median(values) for side, values in samples.items()}
    # Each round's sides ran back to back: the per-round ratio cancels the machine's slow drift.
    paired = [u / r for u, r in zip(samples["uring"], samples["readv"], strict=True)]
    quartiles = statistics.quantiles(paired, n=4, method="inclusive")
    extra = {}
    if "uring-nolink" in samples:
        extra["uring-nolink/uring"] = medians["uring-nolink"] / medians["uring"]
    return {
        **extra,
        "samples": samples,
        "paired_uring/readv": {"median": statistics.median(paired), "min": min(paired),
                               "q1": quartiles[0], "q3": quartiles[2], "max": max(paired),
                               "rounds_uring_faster": sum(p > 1 for p in paired),
                               "rounds": len(paired)},
        "median_pps": medians,
        "spread": {side: [min(values), max(values)] for side, values in samples.items()},
        "uring/readv": medians["uring"] / medians["readv"],
        "uring/python": medians["uring"] / medians["python"],
        "readv/python": medians["readv"] / medians["python"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--send-packets", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", default="64,1500")
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--only", default="pair,send,null")
    parser.add_argument("--nolink", action="store_true",
                        help="a fourth side in send/null: io_uring writes without IOSQE_IO_LINK "
                             "(inexact on a mid-batch error; measures what the links cost)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.nolink:
        SIDES.append("uring-nolink")
    reason = unavailable_reason()
    if reason:
        print(f"io_uring is not available here: {reason}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {args.cpu})
    sizes = [int(text) for text in args.sizes.split(",")]
    scenarios = args.only.split(",")
    io = UringIO(256)
    results: dict[str, dict[int, dict[str, object]]] = {}
    if "pair" in scenarios:
        with lab(2) as pair:
            results["pair"] = {
                size: interleave(args.rounds, lambda side, size=size: pair_run(
                    side, pair, io, size, args.packets, args.batch), SIDES[:3])
                for size in sizes}
    if "send" in scenarios:
        with lab(1) as (queue,):
            results["send"] = {
                size: interleave(args.rounds, lambda side, size=size: send_run(
                    side, queue.fileno(), io, size, args.send_packets, args.batch), SIDES)
                for size in sizes}
    if "null" in scenarios:
        fd = os.open("/dev/null", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            results["null"] = {
                size: interleave(args.rounds, lambda side, size=size: send_run(
                    side, fd, io, size, args.send_packets * 5, args.batch), SIDES)
                for size in sizes}
        finally:
            os.close(fd)
    if args.json:
        json.dump({"machine": platform.uname()._asdict(), "args": vars(args),
                   "uring_flags": io.flags, "uring_stats": io.stats(), "results": results},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"io_uring flags: {', '.join(io.flags)}; batch {args.batch}; CPU {args.cpu}")
    print(f"{'scenario':>8} {'size':>5} {'uring pps':>11} {'readv pps':>11} {'python pps':>11}"
          f" {'u/readv':>7} {'u/py':>6} {'readv/py':>8}")
    for scenario, by_size in results.items():
        for size, r in by_size.items():
            m, s = r["median_pps"], r["spread"]
            print(f"{scenario:>8} {size:>5} {m['uring']:>11,.0f} {m['readv']:>11,.0f}"
                  f" {m['python']:>11,.0f} {r['uring/readv']:>7.2f} {r['uring/python']:>6.2f}"
                  f" {r['readv/python']:>8.2f}")
            print("               spread: " + ", ".join(
                f"{side} {s[side][0]:,.0f}..{s[side][1]:,.0f}" for side in s))
            if "uring-nolink" in m:
                print(f"               uring-nolink {m['uring-nolink']:,.0f} pps ="
                      f" {r['uring-nolink/uring']:.2f}x linked uring")
            p = r["paired_uring/readv"]
            print(f"               per-round uring/readv: median {p['median']:.2f}, quartiles"
                  f" {p['q1']:.2f}..{p['q3']:.2f}, range {p['min']:.2f}..{p['max']:.2f},"
                  f" uring faster in {p['rounds_uring_faster']}/{p['rounds']} rounds")
    print(f"io_uring counters: {io.stats()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
