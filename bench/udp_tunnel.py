"""Interleaved: TCP through a flannel-UDP-style tunnel made of two ``tapengine forward TUN --udp``
engines, with and without offloads, against the same tunnel made of a plain Python loop per side
(``os.read`` of the tun, ``send`` on a connected UDP socket, and back: flannel's UDP backend's
loop, in Python), on the same namespaces.

    sudo .venv/bin/python bench/udp_tunnel.py [--rounds 5] [--seconds 3] [--json]

Namespaces A and B (a unique ``te`` prefix, removed at the end) share a veth underlay,
10.77.0.1/24 and 10.77.0.2/24, MTU 1500; each side's tun is 10.78.0.k/24 with MTU 1472 (the
underlay's less the outer IPv4 and UDP headers, so datagrams are never fragmented). Per round and
setup the tunnel is built, ``iperf3 -c 10.78.0.2 -t SECONDS`` runs from A to B (one TCP stream),
and the tunnel is taken down; setups alternate A B C, then C B A. Printed: the receiver's Gbit/s
per setup (median, min..max) and the median of per-round ratios against the Python tunnel. Needs
root, iperf3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from tapengine.nsexec import nsexec_argv

UNDERLAY = ("10.77.0.1", "10.77.0.2")
OVERLAY = ("10.78.0.1", "10.78.0.2")
PORT = 4789
TUN_MTU = 1500 - 28

#: A flannel-UDP-style tunnel end in plain Python: the tun's packets as datagrams to the peer,
#: datagrams from the peer to the tun. Run inside the namespace (``nsexec``), argv: tun name,
#: local address, peer address.
PYTHON_TUNNEL = r"""
import os, select, socket, sys
from tapengine.tun import open_queue
tun = open_queue(sys.argv[1], "tun", vnet_hdr=False)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for option in (33, 32):   # SO_RCVBUFFORCE, SO_SNDBUFFORCE: as the UDP port asks
    sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
sock.bind((sys.argv[2], PORT)); sock.connect((sys.argv[3], PORT)); sock.setblocking(False)
fd = tun.fileno()
print("ready", flush=True)
while True:
    readable, _, _ = select.select([fd, sock], [], [])
    if fd in readable:
        try:
            while True:
                sock.send(os.read(fd, 65536))
        except (BlockingIOError, ConnectionRefusedError):
            pass
    if sock in readable:
        try:
            while True:
                os.write(fd, sock.recv(65536))
        except (BlockingIOError, ConnectionRefusedError):
            pass
""".replace("PORT", str(PORT))


def build_underlay(prefix: str) -> tuple[str, str]:
    a, b = prefix + "a", prefix + "b"
    for name in (a, b):
        pyroute2_netns.create(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=1, state="up")
    with IPRoute(netns=a) as ipr:
        ipr.link("add", ifname=prefix + "ua", kind="veth", peer=prefix + "ub")
        (peer,) = ipr.link_lookup(ifname=prefix + "ub")
        ipr.link("set", index=peer, net_ns_fd=b)
    for netns, ifname, address in ((a, prefix + "ua", UNDERLAY[0]),
                                   (b, prefix + "ub", UNDERLAY[1])):
        with IPRoute(netns=netns) as ipr:
            (index,) = ipr.link_lookup(ifname=ifname)
            ipr.addr("add", index=index, address=address, prefixlen=24)
            ipr.link("set", index=index, state="up")
    return a, b


def bring_up(netns: str, tun: str, address: str) -> None:
    with IPRoute(netns=netns) as ipr:
        (index,) = ipr.link_lookup(ifname=tun)
        ipr.link("set", index=index, mtu=TUN_MTU)
        ipr.addr("add", index=index, address=address, prefixlen=24)
        ipr.link("set", index=index, state="up")


def start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise RuntimeError(f"{argv[:6]}... did not start")
    return proc


def tapengine_side(*options: str) -> Callable[[str, str, str, str], subprocess.Popen[str]]:
    def side(netns: str, tun: str, local: str, peer: str) -> subprocess.Popen[str]:
        return start([sys.executable, "-m", "tapengine", "forward", tun, "--tun", "--udp",
                      f"{local}:{PORT}", "--peer", f"{peer}:{PORT}", "--netns", netns,
                      *options])  # fmt: skip
    return side


def python_side(netns: str, tun: str, local: str, peer: str) -> subprocess.Popen[str]:
    return start(nsexec_argv(netns, [sys.executable, "-c", PYTHON_TUNNEL, tun, local, peer]))


SETUPS = {
    "tapengine": tapengine_side(),
    "tapengine --no-offload": tapengine_side("--no-offload"),
    "python": python_side,
}


def measure(setup: str, a: str, b: str, prefix: str, seconds: float) -> float:
    """One run: the tunnel up, one iperf3 TCP stream A -> B, the tunnel down; Gbit/s received."""
    procs = []
    server = None
    try:
        for netns, tun, k in ((a, prefix + "ta", 0), (b, prefix + "tb", 1)):
            procs.append(SETUPS[setup](netns, tun, UNDERLAY[k], UNDERLAY[1 - k]))
            bring_up(netns, tun, OVERLAY[k])
        server = subprocess.Popen(nsexec_argv(b, ["iperf3", "-s", "-1", "-B", OVERLAY[1]]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):        # the server listening: a client connects, else retry
            result = subprocess.run(
                nsexec_argv(a, ["iperf3", "-c", OVERLAY[1], "-t", str(seconds), "-J"]),
                capture_output=True, text=True, timeout=seconds + 60)  # fmt: skip
            report = json.loads(result.stdout or "{}")
            if "sum_received" in report.get("end", {}):
                return report["end"]["sum_received"]["bits_per_second"] / 1e9
            if "Connection refused" not in str(report.get("error")):
                raise RuntimeError(f"iperf3: {report.get('error') or result.stderr[-300:]}")
            time.sleep(0.05)
        raise RuntimeError(f"iperf3 through {setup} failed: {result.stdout[-500:]}")
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    prefix = "te" + secrets.token_hex(3)
    names = list(SETUPS)
    results: dict[str, list[float]] = {name: [] for name in names}
    loads = []
    try:
        a, b = build_underlay(prefix)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                results[name].append(measure(name, a, b, prefix, args.seconds))
            loads.append(os.getloadavg()[0])
    finally:
        for name in (prefix + "a", prefix + "b"):
            if name in pyroute2_netns.listnetns():
                pyroute2_netns.remove(name)
    ratios = {name: statistics.median(x / y for x, y in zip(results[name], results["python"],
                                                              strict=True))
              for name in names}  # fmt: skip
    if args.json:
        print(json.dumps({"gbps": results, "ratio_to_python": ratios, "load": loads}, indent=2))
        return 0
    print(f"{platform.node()} {platform.release()}, {args.rounds} rounds of {args.seconds:g} s, "
          f"load {min(loads):.1f}..{max(loads):.1f}")
    print(f"{'setup':<24} {'Gbit/s median':>14} {'min..max':>16} {'x python':>9}")
    for name in names:
        values = results[name]
        print(f"{name:<24} {statistics.median(values):>14.2f} "
              f"{min(values):>7.2f}..{max(values):<7.2f} {ratios[name]:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
