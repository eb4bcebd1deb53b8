"""Interleaved A/B: a UDP socket port (``UdpPortIO``: recvmmsg/sendmmsg) vs a Python
``recvfrom``/``sendto`` loop, on the same sockets (issue 11's UDP port target).

    .venv/bin/python bench/udp_port.py [--rounds 21] [--datagrams 1024] [--sizes 64,1400] [--json]

The work measured is a UDP echo: a server socket on loopback holds ``--datagrams`` datagrams from
two client sockets, queued before the clock starts; the server reads each and sends it back to
its sender. ``port`` does it with ``UdpPortIO.recv_batch``/``send_batch`` (batches of 64, the
peer of each datagram kept in its slot, so the reply needs no per-packet Python), ``python``
with ``sock.recvfrom`` and ``sock.sendto``. Only the server's loop is timed; the clients queue
the datagrams and drain the replies (checked: every reply arrives, byte for byte) outside it.
A B alternate, then B A, round after round; the medians of datagrams/s and the median of the
per-round ratios are printed. Needs root only to size the socket buffers (SO_RCVBUFFORCE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import statistics
import sys
import time

from tapengine import PacketRing
from tapengine._batchio import UdpPortIO

BATCH = 64
BUFFER = 32 << 20      # socket buffers that hold a whole round of queued datagrams


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # *BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)
    return sock


def queue(server: socket.socket, clients: list[socket.socket], payloads: list[bytes]) -> None:
    """Queue every payload at the server, alternating clients (loopback delivers within
    sendto, so they are all there when it returns)."""
    address = server.getsockname()
    for k, payload in enumerate(payloads):
        clients[k % len(clients)].sendto(payload, address)


def drain(clients: list[socket.socket], payloads: list[bytes]) -> None:
    """Read every reply back and check it, so a lost or cut datagram fails the run."""
    got: list[list[bytes]] = [[] for _ in clients]
    want = [payloads[k::len(clients)] for k in range(len(clients))]
    deadline = time.monotonic() + 30
    for k, client in enumerate(clients):
        while len(got[k]) < len(want[k]):
            try:
                got[k].append(client.recv(65536))
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"client {k}: {len(got[k])} of {len(want[k])} replies") from None
    for k in range(len(clients)):
        assert hashlib.sha256(b"".join(got[k])).digest() == \
            hashlib.sha256(b"".join(want[k])).digest(), "a reply differs"


def echo_port(port: UdpPortIO, ring: PacketRing, count: int) -> tuple[float, int]:
    done = 0
    cpu = time.process_time_ns()
    start = time.perf_counter()
    while done < count:
        n = port.recv_batch(ring, BATCH)
        if n:
            sent = 0
            while sent < n:
                sent += port.send_batch(ring, ring.head + sent, n - sent)
            ring.consume(n)
            done += n
    return time.perf_counter() - start, time.process_time_ns() - cpu


def echo_python(server: socket.socket, count: int) -> tuple[float, int]:
    recvfrom, sendto = server.recvfrom, server.sendto
    done = 0
    cpu = time.process_time_ns()
    start = time.perf_counter()
    while done < count:
        try:
            data, address = recvfrom(2048)
        except BlockingIOError:
            continue
        sendto(data, address)
        done += 1
    return time.perf_counter() - start, time.process_time_ns() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--datagrams", type=int, default=1024)
    parser.add_argument("--sizes", default="64,1400")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict[str, object] = {"machine": platform.platform(), "cpus": os.cpu_count(),
                                 "load_before": os.getloadavg(), "sizes": {}}
    server, clients = udp_socket(), [udp_socket(), udp_socket()]
    port = UdpPortIO(server)
    ring = PacketRing(256, 2048)
    rates: dict[int, dict[str, list[float]]] = {}
    cpu: dict[int, dict[str, list[float]]] = {}
    ratios: dict[int, list[float]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        payloads = [os.urandom(size) for _ in range(args.datagrams)]
        rates[size], ratios[size] = {"port": [], "python": []}, []
        cpu[size] = {"port": [], "python": []}
        for r in range(args.rounds):
            order = ("port", "python") if r % 2 == 0 else ("python", "port")
            took = {}
            for side in order:
                queue(server, clients, payloads)
                if side == "port":
                    took[side], used = echo_port(port, ring, len(payloads))
                else:
                    took[side], used = echo_python(server, len(payloads))
                drain(clients, payloads)
                rates[size][side].append(len(payloads) / took[side])
                cpu[size][side].append(used / len(payloads))
            ratios[size].append(took["python"] / took["port"])
    report["load_after"] = os.getloadavg()
    for size in rates:
        port_med = statistics.median(rates[size]["port"])
        python_med = statistics.median(rates[size]["python"])
        report["sizes"][size] = {  # type: ignore[index]
            "port_pps": port_med, "python_pps": python_med,
            "ratio_of_medians": port_med / python_med,
            "median_ratio": statistics.median(ratios[size]),
            "port_cpu_ns": statistics.median(cpu[size]["port"]),
            "python_cpu_ns": statistics.median(cpu[size]["python"]),
            "port_range": [min(rates[size]["port"]), max(rates[size]["port"])],
            "python_range": [min(rates[size]["python"]), max(rates[size]["python"])],
        }
    port.close()
    for sock in (server, *clients):
        sock.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['machine']}, {report['cpus']} CPUs, load {report['load_before']} -> "
          f"{report['load_after']}; {args.rounds} rounds of {args.datagrams} datagrams")
    print(" size    port dgram/s  python dgram/s  ratio of medians  median ratio"
          "  CPU ns/dgram port  python  ratio")
    for size, row in report["sizes"].items():  # type: ignore[attr-defined]
        print(f"{size:5d}  {row['port_pps']:14,.0f}  {row['python_pps']:14,.0f}  "
              f"{row['ratio_of_medians']:16.2f}  {row['median_ratio']:12.2f}"
              f"  {row['port_cpu_ns']:17,.0f}  {row['python_cpu_ns']:6,.0f}  "
              f"{row['python_cpu_ns'] / row['port_cpu_ns']:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
