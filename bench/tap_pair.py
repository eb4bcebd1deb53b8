"""Two taps joined by a kernel bridge in a private namespace: what one fd writes, the other reads.

Both taps are opened here (in the calling namespace), then their links move into a fresh namespace
``te<hex>`` where a bridge joins them. Nothing is addressed: frames written into ``a`` are flooded
by the bridge to ``b`` (the destination MAC is never learned), where ``b``'s fd reads them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, netns

from tapengine import PacketRing, TunQueue, open_queue, recv_batch, send_batch

SRC_MAC = bytes.fromhex("020000770001")
DST_MAC = bytes.fromhex("020000770099")  # never a source: always flooded


@dataclass
class TapPair:
    a: TunQueue
    b: TunQueue
    netns: str


@contextlib.contextmanager
def tap_pair(vnet_hdr: bool = False) -> Iterator[TapPair]:
    prefix = "te" + secrets.token_hex(3)
    name = prefix + "ns"
    netns.create(name)
    queues: list[TunQueue] = []
    try:
        _silence_namespace(name)
        queues = [open_queue(prefix + "a", vnet_hdr=vnet_hdr),
                  open_queue(prefix + "b", vnet_hdr=vnet_hdr)]
        with IPRoute() as ipr:
            for queue in queues:
                ipr.link("set", index=ipr.link_lookup(ifname=queue.name)[0], net_ns_fd=name)
        with IPRoute(netns=name) as ipr:
            ipr.link("add", ifname=prefix + "br", kind="bridge", br_stp_state=0)
            (bridge,) = ipr.link_lookup(ifname=prefix + "br")
            for queue in queues:
                (index,) = ipr.link_lookup(ifname=queue.name)
                ipr.link("set", index=index, master=bridge, state="up")
            ipr.link("set", index=bridge, state="up")
        time.sleep(0.05)
        drain(queues[1])
        yield TapPair(queues[0], queues[1], name)
    finally:
        for queue in queues:
            queue.close()
        netns.remove(name)


def _silence_namespace(name: str) -> None:
    """No IPv6 and no IGMP reports: the only frames on the taps are the ones we write."""
    knobs = [f"ipv6/conf/{scope}/disable_ipv6" for scope in ("all", "default")]
    knobs.append("ipv4/igmp_link_local_mcast_reports")
    netns.pushns(name)  # /proc/sys/net is the namespace of the thread that opens it
    try:
        for knob in knobs:
            with open(f"/proc/sys/net/{knob}", "w") as file:
                file.write("0" if "igmp" in knob else "1")
    finally:
        netns.popns()


def ethernet_frame(size: int, seq: int = 0) -> bytes:
    """A ``size``-byte Ethernet frame of an experimental ethertype (never parsed by the kernel)."""
    header = DST_MAC + SRC_MAC + b"\x88\xb5"
    return header + seq.to_bytes(4, "big") + b"\xa5" * (size - len(header) - 4)


def drain(queue: TunQueue) -> int:
    count = 0
    while True:
        try:
            os.read(queue.fileno(), 65536)
        except BlockingIOError:
            return count
        count += 1


def batched_round_trip(pair: TapPair, tx: PacketRing, rx: PacketRing, count: int) -> None:
    """send_batch ``count`` frames into ``a``; recv_batch them from ``b``."""
    sent = send_batch(pair.a, tx, 0, count)
    assert sent == count, f"tap accepted {sent} of {count}"
    got = 0
    while got < count:
        n = recv_batch(pair.b, rx, count - got)
        rx.consume(n)
        got += n


def plain_round_trip(pair: TapPair, frames: list[bytes], count: int) -> None:
    """The same with a plain Python loop of os.write and os.read."""
    write, read = os.write, os.read
    fd_a, fd_b = pair.a.fileno(), pair.b.fileno()
    for frame in frames[:count]:
        write(fd_a, frame)
    got = 0
    while got < count:
        try:
            read(fd_b, 2048)
            got += 1
        except BlockingIOError:
            pass


def make_rings(size: int, count: int) -> tuple[PacketRing, PacketRing, list[bytes]]:
    frames = [ethernet_frame(size, i) for i in range(count)]
    tx, rx = PacketRing(count, 2048), PacketRing(count, 2048)
    for frame in frames:
        tx.push(frame)
    return tx, rx, frames


def no_loss_check(pair: TapPair, run: Callable[[], None]) -> None:
    """Run once and make sure nothing else is in flight afterwards (a benchmark must not leak)."""
    run()
    leftover = drain(pair.b)
    if leftover:
        raise OSError(errno.EPROTO, f"{leftover} unexpected frames on {pair.b.name}")
