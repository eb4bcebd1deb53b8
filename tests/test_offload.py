"""Offloads end to end: 1 GB of the kernel's TCP through the engine, superframes passed through or
segmented in software, IPv4 and IPv6, tun and tap, malformed virtio-net headers, two queues.

The kernel is the independent peer: its TCP stack in two namespaces sends and receives, a SHA-256
of the byte stream is taken on both sides (a checksum the kernel left for the hardware is never
verified by anyone, so only the digest proves the bytes), and its per-device counters must agree
with the engine's. Each transfer sends from one pre-generated buffer (only an 8-byte block index
changes in place) so that Python is not the bottleneck.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from fwdnet import Host, in_netns, kernel_stats, quiet_ipv6
from netutil import wait_until
from tapengine.engine import DEFAULT_TXQUEUELEN, Engine, Port, open_port, raise_txqueuelen
from tapengine.tun import Offload, TunQueue, open_queue

GB = 1 << 30
MB = 1 << 20
BLOCK = 8 * MB
BASE = os.urandom(BLOCK)          # every block of every stream: this, with its index in front
V4 = ("10.77.0.1", "10.77.0.2")
V6 = ("fd77::1", "fd77::2")
NEEDS_CSUM = 1


@dataclass
class Transfer:
    sent: str
    received: str
    nbytes: int
    seconds: float


def _send_stream(sock: socket.socket, nbytes: int, flow: int) -> str:
    block = bytearray(BASE)
    view = memoryview(block)
    digest = hashlib.sha256()
    index = 0
    done = 0
    while done < nbytes:
        struct.pack_into("!II", block, 0, flow, index)
        part = view[:min(BLOCK, nbytes - done)]
        digest.update(part)          # hashlib and sendall release the GIL on large buffers
        sock.sendall(part)
        done += len(part)
        index += 1
    return digest.hexdigest()


def _receive_stream(conn: socket.socket) -> tuple[str, int]:
    buffer = bytearray(4 * MB)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    count = 0
    while n := conn.recv_into(buffer):
        digest.update(view[:n])
        count += n
    return digest.hexdigest(), count


def transfer(src: Host, dst: Host, dst_ip: str, nbytes: int, *, flows: int = 1,
             timeout: float = 120.0) -> list[Transfer]:
    """``flows`` concurrent TCP connections from ``src`` to ``dst_ip`` in ``dst``, each carrying
    ``nbytes``; one ``Transfer`` per flow (sender's and receiver's digest, bytes received)."""
    family = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    listener = in_netns(dst.netns, lambda: socket.create_server((dst_ip, 0), family=family,
                                                                backlog=flows))
    listener.settimeout(timeout)
    port = listener.getsockname()[1]
    received: dict[int, tuple[str, int]] = {}
    sent: dict[int, str] = {}
    errors: list[BaseException] = []

    def serve_one(conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(timeout)
                flow = struct.unpack("!I", conn.recv(4, socket.MSG_PEEK | socket.MSG_WAITALL))[0]
                received[flow] = _receive_stream(conn)
        except BaseException as exc:
            errors.append(exc)

    def accept_all() -> None:
        try:
            for _ in range(flows):
                conn, _ = listener.accept()
                thread = threading.Thread(target=serve_one, args=(conn,))
                thread.start()
                servers.append(thread)
        except BaseException as exc:
            errors.append(exc)

    def client(flow: int) -> None:
        try:
            sock = in_netns(src.netns, socket.socket, family, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(timeout)
                sock.connect((dst_ip, port))
                sent[flow] = _send_stream(sock, nbytes, flow)
        except BaseException as exc:
            errors.append(exc)

    servers: list[threading.Thread] = []
    start = time.monotonic()
    acceptor = threading.Thread(target=accept_all)
    acceptor.start()
    clients = [threading.Thread(target=client, args=(flow,)) for flow in range(flows)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout)
    acceptor.join(timeout)
    for thread in servers:
        thread.join(timeout)
    seconds = time.monotonic() - start
    listener.close()
    if errors:
        raise errors[0]
    return [Transfer(sent.get(flow, ""), *received.get(flow, ("", 0)), seconds)
            for flow in range(flows)]


def report(label: str, result: list[Transfer], nbytes: int) -> None:
    seconds = result[0].seconds
    print(f"\n{label}: {nbytes * len(result) / MB:.0f} MiB in {seconds:.2f} s "
          f"({8 * nbytes * len(result) / seconds / 1e9:.2f} Gbit/s)")


def place(ifname: str, netns: str, k: int, *, ipv6: bool) -> Host:
    """Move ``ifname`` into ``netns`` with 10.77.0.(k+1)/24 and, with ``ipv6``, fd77::(k+1)/64
    (without duplicate address detection); without ``ipv6``, IPv6 is off in ``netns``."""
    if not ipv6:
        quiet_ipv6(netns)
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        ipr.link("set", index=index, net_ns_fd=netns)
    with IPRoute(netns=netns) as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        ipr.addr("add", index=index, address=V4[k], prefixlen=24)
        ipr.link("set", index=index, state="up")
    if ipv6:
        subprocess.run(["ip", "-n", netns, "addr", "add", f"{V6[k]}/64", "dev", ifname, "nodad"],
                       check=True)
    return Host(netns, ifname, V4[k])


@pytest.fixture
def pair(make_netns: Callable[[str], str], prefix: str) -> Iterator[Callable[..., list[Host]]]:
    """``pair(mode, offloads=(True, True), queues=1, ipv6=False)``: two engine ports opened here,
    port k moved into namespace ``<prefix>n<k>``; the ports are in ``pair.ports``."""
    opened: list[Port] = []

    def make(mode: str = "tap", offloads: tuple[bool, bool] = (True, True), queues: int = 1,
             ipv6: bool = False) -> list[Host]:
        ports = []
        for k, offload in enumerate(offloads):
            ports.append(open_port(f"{prefix}p{k}", mode=mode, queues=queues,  # type: ignore[arg-type]
                                   offload=offload))
            opened.append(ports[-1])
        make.ports = ports  # type: ignore[attr-defined]
        return [place(port.name, make_netns(f"n{k}"), k, ipv6=ipv6)
                for k, port in enumerate(ports)]

    yield make  # type: ignore[misc]
    for port in opened:
        port.close()


def address(k: int, ipv6: bool) -> str:
    return V6[k] if ipv6 else V4[k]


def assert_kernel_agrees(engine: Engine, hosts: list[Host]) -> None:
    """What the engine read from a device is exactly what the kernel sent out of it.

    Called once the engine has stopped (its counters are final): the kernel counts a tun/tap's tx
    when the frame is read, so a frame still queued is counted by neither side.
    """
    stats = engine.stats()
    for port, host in zip(stats.ports, hosts, strict=True):
        kernel = kernel_stats(host)
        assert (port.rx_packets, port.rx_bytes) == (kernel["tx_packets"], kernel["tx_bytes"])


FAMILIES = pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
MODES = pytest.mark.parametrize("mode", ["tap", "tun"])


@MODES
@FAMILIES
def test_1_gb_of_tcp_passes_through_as_superframes_intact(
        pair: Callable[..., list[Host]], mode: str, ipv6: bool) -> None:
    a, b = pair(mode, ipv6=ipv6)
    with Engine(pair.ports, "wire") as engine:  # type: ignore[attr-defined]
        (result,) = transfer(a, b, address(1, ipv6), GB)
        report(f"offload {mode} {'ipv6' if ipv6 else 'ipv4'}", [result], GB)
        assert (result.received, result.nbytes) == (result.sent, GB)
    stats = engine.stats()
    assert_kernel_agrees(engine, [a, b])
    sender = stats.ports[0]
    assert {"csum", "tso4", "tso6"} <= set(sender.offload)
    assert sender.rx_bytes / sender.rx_packets > 9000              # superframes, not MTU frames
    assert stats.ports[1].tx_bytes == sender.rx_bytes               # passed through, not split
    assert stats.ports[1].segmented == 0
    assert not stats.header_drops
    assert not any(port.drops for port in stats.ports)


@MODES
@FAMILIES
def test_1_gb_of_tcp_toward_a_port_without_offloads_is_segmented_in_software_intact(
        pair: Callable[..., list[Host]], mode: str, ipv6: bool) -> None:
    a, b = pair(mode, offloads=(True, False), ipv6=ipv6)
    with Engine(pair.ports, "wire") as engine:  # type: ignore[attr-defined]
        (result,) = transfer(a, b, address(1, ipv6), GB)
        report(f"segmenting {mode} {'ipv6' if ipv6 else 'ipv4'}", [result], GB)
        assert (result.received, result.nbytes) == (result.sent, GB)
    stats = engine.stats()
    assert_kernel_agrees(engine, [a, b])
    sender, plain = stats.ports
    assert sender.offload and not plain.offload
    assert sender.rx_bytes / sender.rx_packets > 9000              # superframes came in
    assert plain.segmented > 0                                      # ... and were split here
    mtu_frame = 1500 + (14 if mode == "tap" else 0)
    assert plain.tx_bytes / plain.tx_packets <= mtu_frame
    assert plain.tx_packets > sender.rx_packets                     # one superframe, many frames
    kernel_b = kernel_stats(b)
    assert kernel_b["rx_packets"] == plain.tx_packets               # B took every segment
    assert kernel_b["rx_errors"] == 0 and kernel_b["rx_dropped"] == 0
    assert not stats.header_drops
    assert not any(port.drops for port in stats.ports)


@pytest.fixture
def bridged(make_netns: Callable[[str], str], prefix: str) -> Iterator[dict[str, object]]:
    """A with a bridge joining the engine's port p0 and a tap ``inj`` whose vnet fd the test holds
    (whatever the test writes there reaches p0 through the bridge, headers rebuilt by the kernel),
    B with port p1. The bridge carries A's address."""
    a_ns, b_ns = make_netns("n0"), make_netns("n1")
    for netns in (a_ns, b_ns):
        quiet_ipv6(netns)
    ports = [open_port(f"{prefix}p{k}") for k in range(2)]
    inject: TunQueue = open_queue(f"{prefix}inj", "tap", vnet_hdr=True)
    try:
        inject.set_offload(Offload.CSUM | Offload.TSO4 | Offload.TSO6)  # keep the bridge's TSO
        with IPRoute() as ipr:
            for name in (ports[0].name, inject.name):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], net_ns_fd=a_ns)
        with IPRoute(netns=a_ns) as ipr:
            ipr.link("add", ifname=f"{prefix}br", kind="bridge", br_stp_state=0)
            (bridge,) = ipr.link_lookup(ifname=f"{prefix}br")
            for name in (ports[0].name, inject.name):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=bridge,
                         state="up")
            ipr.addr("add", index=bridge, address=V4[0], prefixlen=24)
            ipr.link("set", index=bridge, state="up")
        b = place(ports[1].name, b_ns, 1, ipv6=False)
        yield {"a": Host(a_ns, f"{prefix}br", V4[0]), "b": b, "ports": ports, "inject": inject}
    finally:
        inject.close()
        for port in ports:
            port.close()


def crafted(flags: int, csum_start: int, csum_offset: int, frame: bytes) -> bytes:
    return struct.pack("=BBHHHH", flags, 0, 0, 0, csum_start, csum_offset) + frame


def test_malformed_virtio_headers_are_counted_by_reason_and_forwarding_goes_on(
        bridged: dict[str, object]) -> None:
    a, b = bridged["a"], bridged["b"]
    inject = bridged["inject"]
    assert isinstance(a, Host) and isinstance(b, Host) and isinstance(inject, TunQueue)
    # To nobody (the bridge floods it to p0), from nobody; both are accepted by the kernel (it only
    # checks that the checksum field lies inside the packet), handed on through the bridge and
    # given to the engine by p0 with NEEDS_CSUM and the same csum_start/csum_offset: a TCP
    # checksum field claimed at offset 10 (it is at 16), a UDP one at 16 (it is at 6).
    eth = Ether(dst="02:00:00:77:00:99", src="02:00:00:77:00:01") / \
        IP(src="10.77.0.9", dst="10.77.0.8")
    tcp = crafted(NEEDS_CSUM, 34, 10, bytes(eth / TCP() / (b"x" * 100)))
    udp = crafted(NEEDS_CSUM, 34, 16, bytes(eth / UDP() / (b"x" * 100)))
    with Engine(bridged["ports"], "wire") as engine:  # type: ignore[arg-type]
        for _ in range(5):
            os.write(inject.fileno(), tcp)
            os.write(inject.fileno(), udp)
        wait_until(lambda: engine.stats().ports[0].drop_bad_header >= 10, 30,
                   "the engine to refuse the ten crafted frames")
        # Forwarding goes on: a transfer afterwards arrives intact.
        (result,) = transfer(a, b, V4[1], 256 * MB)
        assert (result.received, result.nbytes) == (result.sent, 256 * MB)
    stats = engine.stats()
    assert stats.header_drops == {"bad_csum_offset": 10}
    assert stats.ports[0].drops == {"bad_header": 10}              # on the ingress port
    assert stats.ports[0].rx_bytes / stats.ports[0].rx_packets > 9000
    assert stats.ports[0].rx_packets == kernel_stats(Host(a.netns, bridged["ports"][0].name,
                                                          "")).get("tx_packets")


def test_two_queues_each_carry_flows_on_their_own_worker_and_every_flow_is_intact(
        pair: Callable[..., list[Host]]) -> None:
    a, b = pair("tap", queues=2)
    flows = 16
    with Engine(pair.ports, "wire") as engine:  # type: ignore[attr-defined]
        assert engine.workers == 2
        results = transfer(a, b, V4[1], 64 * MB, flows=flows)
        report("two queues, 16 flows", results, 64 * MB)
        for result in results:
            assert (result.received, result.nbytes) == (result.sent, 64 * MB)
        threads = {thread.native_id for thread in engine._threads}
    stats = engine.stats()
    # One thread per queue; a queue served by two threads would reorder segments within a flow,
    # which B's TCP would see (out-of-order queue) unless the kernel itself dropped something.
    assert len(threads) == 2
    rx = [queue["rx_packets"] for queue in stats.ports[0].queues]   # per worker = per queue
    assert len(rx) == 2 and all(n > 0 for n in rx), f"a queue carried nothing: {rx}"
    assert stats.ports[0].rx_packets == sum(rx) == kernel_stats(a)["tx_packets"]
    assert sum(queue["tx_packets"] for queue in stats.ports[1].queues) == \
        stats.ports[1].tx_packets == kernel_stats(b)["rx_packets"]
    assert stats.as_json()["ports"][0]["queues"][0]["rx_packets"] == rx[0]
    assert not any(port.drops for port in stats.ports)
    dropped = kernel_stats(a)["tx_dropped"] + kernel_stats(b)["tx_dropped"]
    ofo = tcp_counter(b, "TcpExtTCPOFOQueue")
    print(f"per-worker rx {rx}; kernel tx_dropped {dropped}; B out-of-order segments {ofo}")
    if dropped == 0:
        assert ofo == 0


def tcp_counter(host: Host, name: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", host.netns, "nstat", "-az", name],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0


def txqueuelen(name: str) -> int:
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=name)
        return int(ipr.link("get", index=index)[0].get_attr("IFLA_TXQLEN"))


def test_open_port_raises_the_txqueuelen_and_never_lowers_it(prefix: str,
                                                              privileged: None) -> None:
    with open_port(f"{prefix}q0") as default, open_port(f"{prefix}q1", txqueuelen=20000) as big, \
            open_port(f"{prefix}q2", txqueuelen=0) as untouched:
        assert txqueuelen(default.name) == DEFAULT_TXQUEUELEN > 1000
        assert raise_txqueuelen(big.name, DEFAULT_TXQUEUELEN) == 20000
        assert txqueuelen(big.name) == 20000
        assert txqueuelen(untouched.name) == 1000                  # the kernel's own default


def test_forward_cli_sets_txqueuelen_and_reports_offloads_and_queues(prefix: str,
                                                                    privileged: None) -> None:
    names = [f"{prefix}c0", f"{prefix}c1"]
    proc = subprocess.Popen([sys.executable, "-m", "tapengine", "forward", *names, "--queues", "2",
                             "--txqueuelen", "7000", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "offload csum+tso4+tso6" in line, line
        assert [txqueuelen(name) for name in names] == [7000, 7000]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    report_json = json.loads(out)
    assert [len(port["queues"]) for port in report_json["ports"]] == [2, 2]
    assert all("tso4" in port["offload"] for port in report_json["ports"])
