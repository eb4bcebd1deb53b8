"""The reference naive forwarder: plain Python, ``os.read``/``os.write`` on two tap fds with epoll.

What a careful Python programmer writes first: one packet per syscall (as a tap fd demands), the
loop in the interpreter, no batching beyond draining a ready fd until EAGAIN. ``tapengine bench``
(its ``naive`` and ``tcp-naive`` scenarios) and ``bench/compare_forward.py`` measure tapengine
against it. It ships in the package so that both work from an installed copy.

    python -m tapengine.naive_forward TAP_A TAP_B

Creates the taps if they do not exist (they vanish on exit), prints one line when forwarding,
runs until SIGINT or SIGTERM, then prints packets forwarded and dropped per direction.
"""

from __future__ import annotations

import os
import select
import signal
import sys

from tapengine.tun import open_queue


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    # only the taps are tapengine's (non-blocking fds, no packet info); the loop is plain Python
    queues = [open_queue(name, "tap") for name in argv]
    fds = [queue.fileno() for queue in queues]
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
