"""The reference naive forwarder: plain Python, ``os.read``/``os.write`` on two tap fds with epoll.

What a careful Python programmer writes first: one packet per syscall (as a tap fd demands), the
loop in the interpreter, no batching beyond draining a ready fd until EAGAIN. ``tapengine forward``
is measured against it in ``bench/compare_forward.py``.

    python bench/baselines/naive_forward.py TAP_A TAP_B

Creates the taps if they do not exist (they vanish on exit), prints one line when forwarding,
runs until SIGINT or SIGTERM, then prints packets forwarded and dropped per direction.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    fds = [open_tap(name) for name in argv]
    peer = {fds[0]: fds[1], fds[1]: fds[0]}
    forwarded = dict.fromkeys(fds, 0)
    dropped = dict.fromkeys(fds, 0)
    stop_r, stop_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
    signal.signal(signal.SIGINT, lambda *_: os.write(stop_w, b"x"))
    epoll = select.epoll()
    for fd in (*fds, stop_r):
        epoll.register(fd, select.EPOLLIN)
    print(f"naive forwarding {argv[0]} <-> {argv[1]}", flush=True)
    running = True
    while running:
        try:
            events = epoll.poll()
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == stop_r:
                running = False
                continue
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                try:
                    os.write(peer[fd], frame)
                    forwarded[fd] += 1
                except OSError:
                    dropped[fd] += 1
    for fd, name in zip(fds, argv, strict=True):
        print(f"{name}: forwarded {forwarded[fd]} dropped {dropped[fd]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
