"""recv_batch / send_batch against the kernel: frames built by the kernel's own UDP stack (or by
scapy) on one side, our batched I/O on the other, checked byte for byte and with kernel counters."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from conftest import inside_netns
from netutil import configure, move_link, stats64
from tapengine import PacketRing, TunQueue, open_queue, recv_batch, send_batch
from tapengine.errors import DeviceGoneError

LOCAL_IP, PEER_IP = "10.77.0.1", "10.77.0.2"
PEER_MAC = "02:00:00:77:00:02"
PORT = 47000


@dataclass
class Endpoint:
    queue: TunQueue
    netns: str
    mac: str | None


@pytest.fixture
def endpoint(make_netns: Callable[[str], str], prefix: str,
             request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    """A tun or tap opened here, its link moved into a fresh namespace and addressed there."""
    mode, vnet_hdr = getattr(request, "param", ("tap", False))
    netns = make_netns("ns")
    queue = open_queue(prefix + "d", mode, vnet_hdr=vnet_hdr)
    try:
        move_link(queue.name, netns)
        neighbors = {PEER_IP: PEER_MAC} if mode == "tap" else None
        info = configure(queue.name, netns, address=f"{LOCAL_IP}/24", neighbors=neighbors)
        yield Endpoint(queue, netns, info["mac"] if mode == "tap" else None)  # type: ignore[arg-type]
    finally:
        queue.close()


def send_udp_from_netns(netns: str, payloads: list[bytes]) -> None:
    with inside_netns(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            sock.sendto(payload, (PEER_IP, PORT))


def drain(queue: TunQueue, ring: PacketRing, want: int, timeout: float = 5.0) -> list[bytes]:
    """Read until ``want`` of our UDP packets arrived; return every frame read, in order."""
    deadline = time.monotonic() + timeout
    frames: list[bytes] = []
    while time.monotonic() < deadline:
        n = recv_batch(queue, ring, 64, vnet_hdr=queue.vnet_hdr)
        frames += [ring.packet(ring.head + i) for i in range(n)]
        ring.consume(n)
        if len(ours(frames, queue.mode)) >= want:
            break
        if n == 0:
            time.sleep(0.005)
    return frames


def ours(frames: list[bytes], mode: str) -> list[IP]:
    """Our UDP datagrams among the frames (the kernel also sends IPv6 neighbour discovery)."""
    packets = [Ether(f)[IP] if mode == "tap" and IP in Ether(f) else None for f in frames] \
        if mode == "tap" else [IP(f) if f[0] >> 4 == 4 else None for f in frames]
    return [p for p in packets if p is not None and UDP in p and p[UDP].dport == PORT]


def checksums_are_valid(packet: IP) -> bool:
    fresh = packet.copy()
    del fresh.chksum
    del fresh[UDP].chksum
    rebuilt = IP(bytes(fresh))
    return rebuilt.chksum == packet.chksum and rebuilt[UDP].chksum == packet[UDP].chksum


@pytest.mark.parametrize("endpoint", [("tap", False), ("tun", False), ("tap", True)],
                         indirect=True, ids=["tap", "tun", "tap-vnet"])
def test_recv_batch_returns_exactly_what_the_kernel_sent(endpoint: Endpoint) -> None:
    payloads = [os.urandom(size) for size in (1, 18, 100, 600, 1472)] * 8
    ring = PacketRing(64, 2048)
    send_udp_from_netns(endpoint.netns, payloads)
    frames = drain(endpoint.queue, ring, len(payloads))
    received = ours(frames, endpoint.queue.mode)
    assert [bytes(p[UDP].payload) for p in received] == payloads
    for packet in received:
        assert (packet.src, packet.dst) == (LOCAL_IP, PEER_IP)
        assert checksums_are_valid(packet)
    if endpoint.queue.mode == "tap":
        assert all(Ether(f).dst == PEER_MAC for f in frames if IP in Ether(f))
    if endpoint.queue.vnet_hdr:  # no offloads negotiated: plain headers, nothing to complete
        assert set(ring.headers["gso_type"].tolist()) == {0}


@pytest.mark.parametrize("endpoint", [("tap", False), ("tun", False), ("tap", True)],
                         indirect=True, ids=["tap", "tun", "tap-vnet"])
def test_send_batch_delivers_to_the_kernel_stack(endpoint: Endpoint) -> None:
    queue = endpoint.queue
    payloads = [b"%04d" % i + os.urandom(i * 7 % 1400) for i in range(100)]
    ring = PacketRing(128, 2048)
    for payload in payloads:
        packet = IP(src=PEER_IP, dst=LOCAL_IP) / UDP(sport=PORT, dport=PORT) / payload
        if queue.mode == "tap":
            packet = Ether(src=PEER_MAC, dst=endpoint.mac) / packet
        ring.push(bytes(packet))
    with inside_netns(endpoint.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((LOCAL_IP, PORT))
        sock.settimeout(5)
        before = stats64(queue.name, endpoint.netns)
        sent = send_batch(queue, ring, ring.head, ring.pending, vnet_hdr=queue.vnet_hdr)
        assert sent == len(payloads)
        ring.consume(sent)
        received = [sock.recv(2048) for _ in payloads]
    after = stats64(queue.name, endpoint.netns)
    assert received == payloads
    assert after["rx_packets"] - before["rx_packets"] == len(payloads)
    assert after["rx_bytes"] - before["rx_bytes"] == sum(
        ring.lengths[i] for i in range(len(payloads)))


def test_recv_batch_on_an_idle_fd_returns_zero(privileged: None, prefix: str) -> None:
    ring = PacketRing(8, 2048)
    with open_queue(prefix + "i") as queue:  # link down: the kernel sends nothing through it
        assert recv_batch(queue, ring, 8) == 0  # EAGAIN: "nothing now", not an error
        assert recv_batch(queue, ring, 0) == 0
    assert ring.tail == 0


def test_recv_batch_respects_budget_and_ring_space(endpoint: Endpoint) -> None:
    ring = PacketRing(4, 2048)
    send_udp_from_netns(endpoint.netns, [b"x"] * 10)
    time.sleep(0.05)
    assert recv_batch(endpoint.queue, ring, 3) == 3
    assert recv_batch(endpoint.queue, ring, 64) == 1  # only one slot left
    assert recv_batch(endpoint.queue, ring, 64) == 0  # full: nothing read, nothing lost
    assert ring.pending == 4


def test_send_batch_error_mid_batch_reports_completed(endpoint: Endpoint) -> None:
    ring = PacketRing(4, 2048)
    good = Ether(src=PEER_MAC, dst=endpoint.mac) / IP(src=PEER_IP, dst=LOCAL_IP) / UDP() / b"ok"
    ring.push(bytes(good))
    ring.push(b"\x00" * 5)  # shorter than an Ethernet header: the tap driver refuses it
    ring.push(bytes(good))
    with pytest.raises(OSError) as caught:
        send_batch(endpoint.queue, ring, 0, 3)
    assert caught.value.errno == errno.EINVAL
    assert caught.value.completed == 1  # type: ignore[attr-defined]
    assert "after 1 packet" in str(caught.value)


def test_device_deleted_under_the_fd_is_reported(endpoint: Endpoint) -> None:
    with IPRoute(netns=endpoint.netns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=endpoint.queue.name)[0])
    ring = PacketRing(4, 2048)
    with pytest.raises(DeviceGoneError) as caught:
        recv_batch(endpoint.queue, ring, 4)
    assert caught.value.completed == 0  # type: ignore[attr-defined]
    assert "deleted" in str(caught.value)


def test_bad_arguments_are_refused_before_any_io() -> None:
    ring = PacketRing(4, 64)
    with pytest.raises(ValueError, match="budget"):
        recv_batch(0, ring, -1)
    with pytest.raises(ValueError, match="count"):
        send_batch(0, ring, 0, 5)
    with pytest.raises(ValueError, match="file descriptor"):
        recv_batch(-1, ring, 1)
    with pytest.raises(TypeError):
        recv_batch(0, None, 1)  # type: ignore[arg-type]
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        recv_batch(0, ring, 1)


def test_closed_fd_raises_ebadf_with_completed_zero() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(OSError) as caught:
        recv_batch(read_end, PacketRing(4, 64), 4)
    assert caught.value.errno == errno.EBADF
    assert caught.value.completed == 0  # type: ignore[attr-defined]
