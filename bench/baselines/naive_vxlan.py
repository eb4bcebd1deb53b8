"""A naive VXLAN encapsulator in plain Python: what bench/vxlan.py measures tapengine against.

What a careful Python programmer writes first: one tap fd (``os.read``/``os.write``, one frame per
syscall, as a tap demands) and one UDP socket (``sendto``/``recvfrom``, one datagram per syscall),
an epoll loop in the interpreter; every frame of the tap goes to the one remote VTEP with the
8-byte header in front, every datagram with our VNI from that remote goes to the tap.

    python bench/baselines/naive_vxlan.py TAP VNI LOCAL REMOTE [DSTPORT] [UNDERLAY_NETNS]

The tap is opened in the namespace the program runs in, the socket in UNDERLAY_NETNS (when
given). Prints one line when it runs, then the frames moved each way on SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

from tapengine.netns import run_in_netns
from tapengine.tun import Offload, open_queue


def main(argv: list[str]) -> int:
    if not 4 <= len(argv) <= 6:
        print(__doc__, file=sys.stderr)
        return 2
    tap, vni, local, remote = argv[0], int(argv[1]), argv[2], argv[3]
    port = int(argv[4]) if len(argv) > 4 else 4789
    netns = argv[5] if len(argv) > 5 else None
    family = socket.AF_INET6 if ":" in local else socket.AF_INET
    header = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"

    def bound() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((local, port))
        sock.setblocking(False)
        return sock

    sock = run_in_netns(netns, bound)
    queue = open_queue(tap, "tap")
    queue.set_offload(Offload(0))   # plain frames (a persistent tap keeps an earlier user's TSO)
    fd = queue.fileno()
    peer = (remote, port)
    moved = {"out": 0, "in": 0}
    stop_r, stop_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
    signal.signal(signal.SIGINT, lambda *_: os.write(stop_w, b"x"))
    epoll = select.epoll()
    for watched in (fd, sock.fileno(), stop_r):
        epoll.register(watched, select.EPOLLIN)
    print(f"naive VXLAN {tap} <-> {remote}:{port} VNI {vni}", flush=True)
    running = True
    while running:
        try:
            events = epoll.poll()
        except InterruptedError:
            continue
        for ready, _ in events:
            if ready == stop_r:
                running = False
            elif ready == fd:
                while True:
                    try:
                        frame = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    try:
                        sock.sendto(header + frame, peer)
                        moved["out"] += 1
                    except OSError:
                        pass
            else:
                while True:
                    try:
                        datagram, (host, _) = sock.recvfrom(65536)
                    except BlockingIOError:
                        break
                    if host == remote and datagram[:8] == header and len(datagram) >= 22:
                        try:
                            os.write(fd, datagram[8:])
                            moved["in"] += 1
                        except OSError:
                            pass
    print(f"frames out {moved['out']}, in {moved['in']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
