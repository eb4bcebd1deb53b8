"""A UDP echo responder written on tapengine's ring: one batch at a time, with numpy.

Creates a namespace with a tap in it (address 10.77.0.1/24, and a static neighbour 10.77.0.2 whose
MAC is ours), sends datagrams from the kernel's own UDP socket inside the namespace, and answers
them from this process: every frame of a batch gets its MACs, IPs and ports swapped in place
(the checksums stay valid: the sums are order-independent), then the batch goes back with one
send_batch. Everything is removed at the end.

    sudo .venv/bin/python examples/udp_echo.py
"""

from __future__ import annotations

import secrets
import socket
import time

import numpy as np
from pyroute2 import IPRoute, netns

import tapengine

OUR_MAC = "02:00:00:77:00:02"


def swap(frames: np.ndarray, a: slice, b: slice) -> None:
    frames[:, a], frames[:, b] = frames[:, b].copy(), frames[:, a].copy()


def main() -> None:
    prefix = "te" + secrets.token_hex(3)
    ns = prefix + "ns"
    netns.create(ns)
    try:
        with tapengine.open_queue(prefix + "t") as tap, tapengine.PacketRing(64, 2048) as ring:
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=tap.name)[0], net_ns_fd=ns)
            with IPRoute(netns=ns) as ipr:
                (index,) = ipr.link_lookup(ifname=tap.name)
                ipr.addr("add", index=index, address="10.77.0.1", prefixlen=24)
                ipr.link("set", index=index, state="up")
                ipr.neigh("add", dst="10.77.0.2", lladdr=OUR_MAC, ifindex=index,
                          state="permanent")
            netns.pushns(ns)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            netns.popns()
            with sock:
                sock.settimeout(2)
                messages = [f"hello {i}".encode() for i in range(8)]
                for message in messages:
                    sock.sendto(message, ("10.77.0.2", 7))
                time.sleep(0.05)
                count = tap.recv_batch(ring, 64)  # the ring is empty: slots 0..count-1
                frames, lengths = ring.frames[:count], ring.lengths[:count]  # zero-copy views
                is_udp4 = (frames[:, 12] == 0x08) & (frames[:, 13] == 0x00) & (frames[:, 23] == 17)
                udp = int(is_udp4.sum())
                print(f"read {count} frames in one batch, {udp} of them UDP/IPv4")
                order = np.argsort(~is_udp4, kind="stable")  # UDP first, in arrival order
                frames[:], lengths[:] = frames[order], lengths[order]
                swap(frames, slice(0, 6), slice(6, 12))  # Ethernet destination <-> source
                swap(frames, slice(26, 30), slice(30, 34))  # IPv4 source <-> destination
                swap(frames, slice(34, 36), slice(36, 38))  # UDP ports (no IP options here)
                del frames, lengths  # views pin the ring; let them go before it closes
                sent = tap.send_batch(ring, 0, udp)
                ring.clear()
                replies = [sock.recvfrom(2048) for _ in range(udp)]
                print(f"sent {sent} frames back; the kernel's socket received:")
                for data, source in replies:
                    print(f"  {data.decode()!r} from {source[0]}:{source[1]}")
    finally:
        netns.remove(ns)


if __name__ == "__main__":
    main()
