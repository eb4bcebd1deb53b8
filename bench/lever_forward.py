"""``tapengine forward`` with the levers the CLI does not (yet) offer, for the offload bench.

    lever_forward.py TAP_A TAP_B [--queues N] [--no-offload] [--budget N] [--io uring]
                     [--spin N] [--pin-workers 0,1] [--txqueuelen N] [--sndbuf BYTES]

Opens both taps through ``tapengine.engine.open_port`` as the CLI does, with the devices'
txqueuelen raised to ``--txqueuelen`` (0, the default here: left at the kernel's 1000), optionally
TUNSETSNDBUF on every queue, runs ``Engine`` with ``spin`` (empty passes before sleeping in
epoll: a busy-poll knob) and pins worker k to the k-th CPU of ``--pin-workers``. Prints one
"forwarding" line, runs until SIGTERM/SIGINT, prints stats as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from tapengine.engine import Engine, open_ports


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ports", nargs=2)
    parser.add_argument("--queues", type=int, default=1)
    parser.add_argument("--no-offload", action="store_true")
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--io", choices=("readv", "uring"), default="readv")
    parser.add_argument("--spin", type=int, default=0)
    parser.add_argument("--pin-workers", default="", help="CPUs, e.g. 0,1 or 0:1")
    parser.add_argument("--txqueuelen", type=int, default=0)
    parser.add_argument("--sndbuf", type=int, default=0)
    args = parser.parse_args()
    ports = open_ports(args.ports, queues=args.queues, offload=not args.no_offload,
                       txqueuelen=args.txqueuelen)     # 0: the device keeps the kernel's 1000
    if args.sndbuf:
        for port in ports:
            for queue in port.queues:
                queue.set_sndbuf(args.sndbuf)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine = Engine(ports, "wire", budget=args.budget, io=args.io, spin=args.spin)
    engine.start()
    if args.pin_workers:
        cpus = [int(cpu) for cpu in args.pin_workers.replace(":", ",").split(",")]
        for k, thread in enumerate(engine._threads):
            assert thread.native_id is not None
            os.sched_setaffinity(thread.native_id, {cpus[k % len(cpus)]})
    print(f"forwarding {' <-> '.join(args.ports)}", flush=True)
    while not stop.wait(0.5):
        pass
    engine.close()
    for port in ports:
        port.close()
    print(json.dumps(engine.stats().as_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
