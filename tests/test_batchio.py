"""recv_batch / send_batch against the kernel, through each I/O backend (``batch_io``: readv/writev
and io_uring): frames built by the kernel's own UDP stack (or by scapy) on one side, our batched
I/O on the other, checked byte for byte and with kernel counters; then what is io_uring's own
(setup flags, thread ownership, the probe and the fallback to readv/writev)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

import tapengine
import tapengine._batchio
from conftest import inside_netns
from netutil import configure, move_link, stats64, wait_until
from tapengine import (
    PacketRing,
    ReadvIO,
    TunQueue,
    UringIO,
    open_batch_io,
    open_queue,
    recv_batch,
    send_batch,
)
from tapengine import _uring as uring
from tapengine._batchio import BatchIO, UdpPortIO
from tapengine.errors import DeviceGoneError

LOCAL_IP, PEER_IP = "10.77.0.1", "10.77.0.2"
PEER_MAC = "02:00:00:77:00:02"
PORT = 47000
ETHERTYPE = b"\x88\xb5"  # experimental: the bridge floods it, nothing else parses it


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
    """Send ``payloads`` to the peer through the test's device; return once every one of them is
    queued for the device's reader (the socket's unsent bytes, SIOCOUTQ, are back to zero: the
    tun driver lets go of a frame's socket when it queues the frame)."""
    with inside_netns(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            sock.sendto(payload, (PEER_IP, PORT))
        wait_until(lambda: unsent_bytes(sock) == 0, 30, "the datagrams to reach the device")


def unsent_bytes(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0]


def drain(io: BatchIO, queue: TunQueue, ring: PacketRing, want: int,
          timeout: float = 30.0) -> list[bytes]:
    """Read until ``want`` of our UDP packets arrived; return every frame read, in order."""
    deadline = time.monotonic() + timeout
    frames: list[bytes] = []
    while time.monotonic() < deadline:
        n = recv_batch(queue, ring, 64, vnet_hdr=queue.vnet_hdr, io=io)
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


def in_thread(work: Callable[[], object], timeout: float = 30.0) -> object:
    """Run ``work`` in a fresh thread; fail (rather than hang) if it does not return in time."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(("ok", work()))
        except BaseException as exc:  # handed back to the test
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"no result within {timeout} s: an io_uring request waited instead of failing"
    kind, value = outcome[0]  # type: ignore[misc]
    if kind == "raised":
        raise value  # type: ignore[misc]
    return value


@pytest.fixture
def tap_pair(make_netns: Callable[[str], str], prefix: str,
             request: pytest.FixtureRequest) -> Iterator[tuple[TunQueue, TunQueue, str]]:
    """Taps a and b opened here, bridged in a fresh namespace (IPv6 off): a's frames reach b.
    ``vnet_hdr`` (the indirect parameter, default False) opens both with virtio-net headers."""
    vnet_hdr = getattr(request, "param", False)
    netns = make_netns("ns")
    with inside_netns(netns):
        for knob in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as file:
                file.write("1")
    with open_queue(prefix + "a", vnet_hdr=vnet_hdr) as a, \
            open_queue(prefix + "b", vnet_hdr=vnet_hdr) as b:
        for queue in (a, b):
            move_link(queue.name, netns)
        with IPRoute(netns=netns) as ipr:
            ipr.link("add", ifname=prefix + "br", kind="bridge", br_stp_state=0)
            (bridge,) = ipr.link_lookup(ifname=prefix + "br")
            for queue in (a, b):
                (index,) = ipr.link_lookup(ifname=queue.name)
                # room for every frame a test sends: a reader starved of CPU on a loaded
                # machine must not turn the order test into a test of the kernel's drops
                ipr.link("set", index=index, master=bridge, state="up", txqlen=32768)
            ipr.link("set", index=bridge, state="up")
        yield a, b, netns  # the tests skip the kernel's own frames (by their EtherType)


def numbered(seq: int, size: int) -> bytes:
    header = b"\x02\x00\x00\x77\x00\x99" + b"\x02\x00\x00\x77\x00\x01" + ETHERTYPE
    return header + seq.to_bytes(4, "big") + b"\xa5" * (size - len(header) - 4)



# -- both backends: the same behaviours ---------------------------------------------------------

@pytest.mark.parametrize("endpoint", [("tap", False), ("tun", False), ("tap", True)],
                         indirect=True, ids=["tap", "tun", "tap-vnet"])
def test_recv_batch_returns_exactly_what_the_kernel_sent(endpoint: Endpoint,
                                                         batch_io: BatchIO) -> None:
    payloads = [os.urandom(size) for size in (1, 18, 100, 600, 1472)] * 8
    ring = PacketRing(64, 2048)
    send_udp_from_netns(endpoint.netns, payloads)
    frames = drain(batch_io, endpoint.queue, ring, len(payloads))
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
def test_send_batch_delivers_to_the_kernel_stack(endpoint: Endpoint, batch_io: BatchIO) -> None:
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
        sent = batch_io.send_batch(queue, ring, ring.head, ring.pending, vnet_hdr=queue.vnet_hdr)
        assert sent == len(payloads)
        ring.consume(sent)
        received = [sock.recv(2048) for _ in payloads]
    after = stats64(queue.name, endpoint.netns)
    assert received == payloads
    assert after["rx_packets"] - before["rx_packets"] == len(payloads)
    assert after["rx_bytes"] - before["rx_bytes"] == sum(
        ring.lengths[i] for i in range(len(payloads)))


def test_recv_batch_on_an_idle_fd_returns_zero_at_once(privileged: None, prefix: str,
                                                       batch_io: BatchIO) -> None:
    # io_uring: O_NONBLOCK alone would let it park the read on a poll; RWF_NOWAIT makes it EAGAIN.
    ring = PacketRing(8, 2048)
    with open_queue(prefix + "i") as queue:  # link down: the kernel sends nothing through it
        # in a fresh thread (which then owns a UringIO): a read that waits fails the test
        full, empty = in_thread(lambda: (batch_io.recv_batch(queue, ring, 8),  # type: ignore[misc]
                                         batch_io.recv_batch(queue, ring, 0)))
    assert (full, empty) == (0, 0)  # EAGAIN: "nothing now", not an error
    assert ring.tail == 0
    if isinstance(batch_io, UringIO):
        assert batch_io.stats()["empty_reads"] == 1


def test_recv_batch_respects_budget_and_ring_space(endpoint: Endpoint, batch_io: BatchIO) -> None:
    ring = PacketRing(4, 2048)
    send_udp_from_netns(endpoint.netns, [b"x"] * 10)
    assert batch_io.recv_batch(endpoint.queue, ring, 3) == 3
    assert batch_io.recv_batch(endpoint.queue, ring, 64) == 1  # only one slot left
    assert batch_io.recv_batch(endpoint.queue, ring, 64) == 0  # full: nothing read or lost
    assert ring.pending == 4
    ring.consume(4)
    assert batch_io.recv_batch(endpoint.queue, ring, 64) == 4  # the rest, in order after the first
    assert ring.pending == 4


def test_send_batch_error_mid_batch_sends_nothing_after_it(endpoint: Endpoint,
                                                           batch_io: BatchIO) -> None:
    ring = PacketRing(4, 2048)
    frame = Ether(src=PEER_MAC, dst=endpoint.mac) / IP(src=PEER_IP, dst=LOCAL_IP) \
        / UDP(sport=PORT, dport=PORT)
    ring.push(bytes(frame / b"first"))
    ring.push(b"\x00" * 5)  # shorter than an Ethernet header: the tap driver refuses it
    ring.push(bytes(frame / b"third"))
    with inside_netns(endpoint.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((LOCAL_IP, PORT))
        before = stats64(endpoint.queue.name, endpoint.netns)
        with pytest.raises(OSError) as caught:
            batch_io.send_batch(endpoint.queue, ring, 0, 3)
        sock.settimeout(30)
        assert sock.recv(2048) == b"first"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # the write after the failure never happened
            sock.recv(2048)
    after = stats64(endpoint.queue.name, endpoint.netns)
    assert caught.value.errno == errno.EINVAL
    assert caught.value.completed == 1  # type: ignore[attr-defined]
    assert "after 1 packet" in str(caught.value)
    assert after["rx_packets"] - before["rx_packets"] == 1


def test_device_deleted_under_the_fd_is_reported(endpoint: Endpoint, batch_io: BatchIO) -> None:
    with IPRoute(netns=endpoint.netns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=endpoint.queue.name)[0])
    ring = PacketRing(4, 2048)
    with pytest.raises(DeviceGoneError) as caught:
        batch_io.recv_batch(endpoint.queue, ring, 4)
    assert caught.value.completed == 0  # type: ignore[attr-defined]
    assert "deleted" in str(caught.value)
    ring.push(b"\x00" * 60)
    with pytest.raises(DeviceGoneError):
        batch_io.send_batch(endpoint.queue, ring, 0, 1)


@pytest.mark.parametrize("tap_pair", [False, True], indirect=True, ids=["plain", "vnet"])
def test_numbered_frames_keep_their_order_under_load(
        tap_pair: tuple[TunQueue, TunQueue, str], batch_io: BatchIO) -> None:
    a, b, netns = tap_pair
    vnet = a.vnet_hdr
    batch = 64
    total = 320 * batch
    done = threading.Event()

    def send_all() -> int:
        # its own backend of the same kind: a UringIO belongs to one thread
        with type(batch_io)() as tx_io:
            ring = PacketRing(batch, 2048)
            seq = 0
            while seq < total:
                ring.head = ring.tail = 0
                for i in range(batch):
                    ring.push(numbered(seq + i, 64 + (seq + i) % 700))
                sent = 0
                while sent < batch:
                    sent += tx_io.send_batch(a, ring, sent, batch - sent, vnet_hdr=vnet)
                seq += batch
        done.set()
        return seq

    sender = threading.Thread(target=send_all, daemon=True)
    seen: list[int] = []
    ring = PacketRing(256, 2048)
    dropped_before = stats64(b.name, netns)["tx_dropped"]
    sender.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # odd budgets, reads racing writes: for io_uring, gaps (EAGAIN then a packet) are likely
        n = batch_io.recv_batch(b, ring, 1 + len(seen) % 48, vnet_hdr=vnet)
        for i in range(n):
            frame = ring.packet(ring.head + i)
            if frame[12:14] != ETHERTYPE:
                continue  # the kernel's own (IGMP reports from the bridge)
            if vnet:  # plain frames: a header of zeros, moved along with its frame
                assert bytes(ring.headers[(ring.head + i) & ring.mask]) == bytes(10)
            assert len(frame) == 64 + int.from_bytes(frame[14:18], "big") % 700
            seen.append(int.from_bytes(frame[14:18], "big"))
        ring.consume(n)
        if n == 0 and done.is_set() and \
                len(seen) + stats64(b.name, netns)["tx_dropped"] - dropped_before >= total:
            break  # every frame sent is read, or counted as dropped by the kernel
    sender.join(30)
    assert seen == sorted(set(seen)), "frames were reordered or duplicated"
    dropped = stats64(b.name, netns)["tx_dropped"] - dropped_before
    # whatever is missing was dropped by the kernel (tap b's queue full), never by us
    assert set(seen) <= set(range(total))
    assert total - len(seen) <= dropped, (len(seen), dropped)
    assert len(seen) > total // 2


def test_recv_and_send_batch_take_either_backend(tap_pair: tuple[TunQueue, TunQueue, str],
                                                 batch_io: BatchIO) -> None:
    a, b, _ = tap_pair
    tx, rx = PacketRing(64, 2048), PacketRing(64, 2048)
    frames = [numbered(seq, 60 + seq * 23) for seq in range(64)]
    for frame in frames:
        tx.push(frame)
    assert tapengine.send_batch(a, tx, 0, 64, io=batch_io) == 64
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 64 and time.monotonic() < deadline:   # ours: the kernel's frames are skipped
        n = tapengine.recv_batch(b, rx, 64, io=batch_io)
        got += [rx.packet(rx.head + i) for i in range(n)
                if rx.packet(rx.head + i)[12:14] == ETHERTYPE]
        rx.consume(n)
    assert got == frames
    if isinstance(batch_io, UringIO):
        assert batch_io.stats()["submitted"] >= 128  # both went through io_uring


def datagram_pair() -> tuple[socket.socket, socket.socket]:
    """A non-blocking Unix datagram socket pair: one packet per read and write, like a tun fd."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (a, b):
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return a, b


def test_a_length_past_the_slot_is_refused_before_anything_is_written(batch_io: BatchIO) -> None:
    ring = PacketRing(4, 2048)
    a, b = datagram_pair()
    with a, b:
        for i in range(3):
            ring.push(bytes([i]) * 100)
        ring.lengths[ring.head + 1] = 60014  # past the 8 KiB slab, were it read
        for io in (None, batch_io):
            with pytest.raises(ValueError, match="slot 1 holds a length of 60014 bytes"):
                send_batch(a, ring, ring.head, 3, io=io)
        with pytest.raises(BlockingIOError):
            b.recv(65536)  # not even the packet before the bad one went out
        ring.lengths[ring.head + 1] = 2048  # a full slot is a valid length
        assert send_batch(a, ring, ring.head, 3, io=batch_io) == 3
        assert [len(b.recv(65536)) for _ in range(3)] == [100, 2048, 100]


def test_the_readme_loop_runs_across_the_index_wrap(batch_io: BatchIO) -> None:
    """recv -> send -> consume with head and tail starting 3 packets before 2**32."""
    rounds = 12
    ring = PacketRing(8, 2048)
    ring.head = ring.tail = (1 << 32) - 3
    source, into = datagram_pair()
    out, sink = datagram_pair()
    sent: list[bytes] = []
    got: list[bytes] = []
    with source, into, out, sink:
        for r in range(rounds):
            for i in range(5):
                sent.append(os.urandom(1 + (r * 5 + i) * 37 % 1500))
                source.send(sent[-1])
            n = recv_batch(into, ring, 64, io=batch_io)
            assert n == 5
            assert send_batch(out, ring, ring.head, n, io=batch_io) == n
            ring.consume(n)
            got += [sink.recv(65536) for _ in range(n)]
    assert ring.head == ring.tail == rounds * 5 - 3  # 2**32 - 3 + 60, wrapped
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(b"".join(sent)).digest()
    assert [len(p) for p in got] == [len(p) for p in sent]


def test_a_datagram_longer_than_its_slot_is_dropped_and_counted(batch_io: BatchIO) -> None:
    ring = PacketRing(8, 2048)
    a, b = datagram_pair()
    sizes = [100, 3000, 2048, 2049, 65000, 200]
    payloads = [os.urandom(size) for size in sizes]
    with a, b:
        for payload in payloads:
            a.send(payload)
        n = recv_batch(b, ring, 8, io=batch_io)
        assert n == 3, "the frames that fit, none of them cut"
        assert [ring.packet(ring.head + k) for k in range(n)] == \
            [p for p in payloads if len(p) <= 2048]
        assert ring.truncated == 3
        assert recv_batch(b, ring, 8, io=batch_io) == 0  # the long ones are gone, not queued
        assert ring.truncated == 3


def test_oversize_frames_count_against_the_budget(batch_io: BatchIO) -> None:
    ring = PacketRing(8, 64)
    a, b = datagram_pair()
    with a, b:
        for size in (65, 65, 65, 10, 10):
            a.send(bytes(size))
        assert recv_batch(b, ring, 4, io=batch_io) == 1  # three dropped, one read: 4 reads
        assert ring.truncated == 3
        assert recv_batch(b, ring, 4, io=batch_io) == 1


@pytest.mark.parametrize("endpoint", [("tap", False), ("tun", False), ("tap", True)],
                         indirect=True, ids=["tap", "tun", "tap-vnet"])
def test_a_frame_longer_than_its_slot_from_the_kernel_is_dropped_and_counted(
        endpoint: Endpoint, batch_io: BatchIO) -> None:
    """A 9000-byte-MTU device hands over a 3000-byte datagram; the ring's slots are 2048 bytes."""
    with IPRoute(netns=endpoint.netns) as ipr:
        (index,) = ipr.link_lookup(ifname=endpoint.queue.name)
        ipr.link("set", index=index, mtu=9000)
    payloads = [os.urandom(size) for size in (100, 3000, 1400, 5000, 200)]
    send_udp_from_netns(endpoint.netns, payloads)
    ring = PacketRing(64, 2048)
    frames = drain(batch_io, endpoint.queue, ring, 3)
    datagrams = [bytes(p[UDP].payload) for p in ours(frames, endpoint.queue.mode)]
    assert datagrams == [p for p in payloads if len(p) <= 1400]
    assert ring.truncated == 2
    assert all(len(frame) <= 2048 for frame in frames)


def test_bad_arguments_are_refused_before_any_io(batch_io: BatchIO) -> None:
    ring = PacketRing(4, 64)
    for io in (None, batch_io):
        with pytest.raises(ValueError, match="budget"):
            recv_batch(0, ring, -1, io=io)
        with pytest.raises(ValueError, match="count"):
            send_batch(0, ring, 0, 5, io=io)
        with pytest.raises(ValueError, match="file descriptor"):
            recv_batch(-1, ring, 1, io=io)
        with pytest.raises(TypeError):
            recv_batch(0, None, 1, io=io)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        recv_batch(0, ring, 1, io="readv")  # type: ignore[arg-type]
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        batch_io.recv_batch(0, ring, 1)


def test_closed_fd_raises_ebadf_with_completed_zero(batch_io: BatchIO) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    for io in (None, batch_io):
        with pytest.raises(OSError) as caught:
            recv_batch(read_end, PacketRing(4, 64), 4, io=io)
        assert caught.value.errno == errno.EBADF
        assert caught.value.completed == 0  # type: ignore[attr-defined]


def test_backends_are_batch_io_and_the_interface_is_not_a_backend() -> None:
    assert issubclass(ReadvIO, BatchIO) and issubclass(UringIO, BatchIO)
    assert ReadvIO().backend == "readv"
    with pytest.raises(TypeError, match="interface"):
        BatchIO()


# -- io_uring's own ---------------------------------------------------------------------------

def test_probe_finds_io_uring_or_says_why() -> None:
    reason = uring.unavailable_reason()
    assert uring.available() is (reason == "")
    if reason == "":
        with UringIO(8) as ring_io:
            assert ring_io.backend == "io_uring"
            assert ring_io.entries == 8


def test_a_ring_takes_the_strongest_setup_flags_the_kernel_accepts(needs_io_uring: None) -> None:
    # 6.1+ takes SINGLE_ISSUER|DEFER_TASKRUN (started disabled); older kernels COOP_TASKRUN or none
    with UringIO(8) as ring_io:
        assert ring_io.flags in (["SINGLE_ISSUER", "DEFER_TASKRUN", "R_DISABLED"],
                                 ["COOP_TASKRUN"], [])


def test_a_ring_belongs_to_the_thread_that_first_uses_it(privileged: None, prefix: str,
                                                         needs_io_uring: None) -> None:
    ring = PacketRing(4, 2048)
    with UringIO(8) as ring_io, open_queue(prefix + "o") as queue:
        # created here, first used by a worker thread: the worker owns it
        assert in_thread(lambda: ring_io.recv_batch(queue, ring, 4)) == 0
        with pytest.raises(RuntimeError, match="another thread"):
            ring_io.recv_batch(queue, ring, 4)
        with pytest.raises(RuntimeError, match="another thread"):
            in_thread(lambda: ring_io.recv_batch(queue, ring, 4))


def race_for_a_new_ring(threads: int) -> list[str]:
    """``threads`` threads released together each receive through one fresh ``UringIO``."""
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, UringIO(8) as ring_io:
        b.setblocking(False)

        def race(ring: PacketRing) -> None:
            barrier.wait()
            try:
                tapengine.recv_batch(b, ring, 4, io=ring_io)
                outcomes.append("owner")
            except RuntimeError:
                outcomes.append("refused")
            except OSError as err:
                outcomes.append("refused" if err.errno == errno.EBUSY else repr(err))

        workers = [threading.Thread(target=race, args=(PacketRing(4, 2048),))
                   for _ in range(threads)]  # fmt: skip
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return outcomes


def test_threads_racing_for_a_new_ring_leave_exactly_one_owner(needs_io_uring: None) -> None:
    """Ownership is taken by one compare-and-swap: however the threads interleave, one wins and
    every other is refused (before or inside the submission), never two owners at once."""
    for _ in range(20):
        outcomes = race_for_a_new_ring(4)
        assert sorted(outcomes) == ["owner"] + ["refused"] * 3, outcomes


def test_a_ring_refuses_bad_sizes_and_use_after_close(needs_io_uring: None) -> None:
    for entries in (0, 3, 8192, "8"):
        with pytest.raises(ValueError, match="entries"):
            UringIO(entries)  # type: ignore[arg-type]
    ring_io = UringIO(8)
    ring_io.close()
    assert ring_io.closed
    with pytest.raises(ValueError, match="closed"):
        recv_batch(0, PacketRing(4, 64), 1, io=ring_io)


def test_without_io_uring_the_readv_backend_is_used(privileged: None, prefix: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAPENGINE_NO_URING", "1")
    assert not uring.available()
    assert "TAPENGINE_NO_URING" in uring.unavailable_reason()
    with pytest.raises(OSError) as caught:
        UringIO(8)
    assert caught.value.errno == errno.ENOSYS
    calls: list[str] = []
    real_recv, real_send = tapengine._batchio.recv_batch, tapengine._batchio.send_batch
    monkeypatch.setattr(tapengine._batchio, "recv_batch",
                        lambda *a, **k: calls.append("recv") or real_recv(*a, **k))
    monkeypatch.setattr(tapengine._batchio, "send_batch",
                        lambda *a, **k: calls.append("send") or real_send(*a, **k))
    ring = PacketRing(4, 2048)
    ring.push(b"\x00" * 60)
    with open_batch_io() as backend, open_queue(prefix + "f") as queue:
        assert isinstance(backend, ReadvIO)
        assert backend.recv_batch(queue, ring, 4) == 0
        assert real_recv(queue, ring, 64, io=backend) == 0  # the README's io=open_batch_io()
        with pytest.raises(OSError) as down:  # the link is down: EIO, as from writev
            backend.send_batch(queue, ring, ring.head, 1)
    assert down.value.errno == errno.EIO
    assert calls == ["recv", "send"]
    monkeypatch.delenv("TAPENGINE_NO_URING")
    if uring.available():
        with open_batch_io(8) as backend:
            assert backend.backend == "io_uring"


# -- UDP sockets: recvmmsg/sendmmsg, a peer per slot (the kernel's own UDP sockets on loopback) --

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK[family], 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def recv_all(sock: socket.socket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    """``count`` datagrams from a kernel socket, with their source (host, port)."""
    got: list[tuple[bytes, tuple[str, int]]] = []

    def more() -> bool:
        try:
            data, address = sock.recvfrom(65536)
        except BlockingIOError:
            return False
        got.append((data, (address[0], address[1])))
        return len(got) >= count

    wait_until(lambda: len(got) >= count or more(), 30, f"{count} datagrams")
    return got


def digest(payloads: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in payloads)).digest()


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.mark.parametrize("via", ["recv_batch", "UdpPortIO"])
def test_udp_datagrams_arrive_with_their_senders_as_peers(family: int, via: str) -> None:
    ring = PacketRing(64, 2048)
    with udp_socket(family) as ours, udp_socket(family) as s1, udp_socket(family) as s2, \
            UdpPortIO(ours) as port:
        sent = []
        for i in range(40):
            payload = os.urandom(1 + i * 37 % 1400)
            sender = (s1, s2)[i % 2]
            sender.sendto(payload, ours.getsockname()[:2])
            sent.append((payload, sender.getsockname()[:2]))
        got = []
        while len(got) < len(sent):
            wait_until(lambda: select_readable(ours), 30, "a datagram")
            first = ring.tail
            n = recv_batch(ours, ring, 16) if via == "recv_batch" else port.recv_batch(ring, 16)
            assert 0 < n <= 16
            got += [(ring.packet(first + k), ring.peer(first + k)) for k in range(n)]
            assert (ring.offsets[[(first + k) & ring.mask for k in range(n)]] == 80).all()
            ring.consume(n)
        assert digest([p for p, _ in got]) == digest([p for p, _ in sent])
        assert got == sent


def select_readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


@pytest.mark.parametrize("via", ["send_batch", "UdpPortIO"])
def test_udp_slots_go_to_their_peers_or_the_connected_one(family: int, via: str) -> None:
    ring = PacketRing(64, 2048)
    with udp_socket(family) as ours, udp_socket(family) as r1, udp_socket(family) as r2, \
            UdpPortIO(ours) as port:
        ours.connect(r2.getsockname())
        sent: dict[str, list[bytes]] = {"r1": [], "r2": []}
        for i in range(30):
            payload = os.urandom(1 + i * 53 % 1400)
            index = ring.push(payload)
            if i % 3 == 0:
                ring.set_peer(index, r1.getsockname()[:2])
                sent["r1"].append(payload)
            else:
                sent["r2"].append(payload)  # family 0: the connected peer
        send = send_batch if via == "send_batch" else None
        n = send(ours, ring, ring.head, 30) if send else port.send_batch(ring, ring.head, 30)
        assert n == 30
        ours_name = ours.getsockname()[:2]
        for name, receiver in (("r1", r1), ("r2", r2)):
            got = recv_all(receiver, len(sent[name]))
            assert digest([p for p, _ in got]) == digest(sent[name])
            assert {source for _, source in got} == {ours_name}


def test_udp_datagram_longer_than_its_slot_is_dropped_counted_never_cut(family: int) -> None:
    ring = PacketRing(16, 2048)
    sizes = [100, 3000, 2048, 2049, 60000, 200]
    payloads = [os.urandom(size) for size in sizes]
    with udp_socket(family) as ours, udp_socket(family) as sender:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for payload in payloads:
            sender.sendto(payload, ours.getsockname())
        wait_until(lambda: select_readable(ours), 30, "a datagram")
        n = 0
        while n < 3:
            n += recv_batch(ours, ring, 16)
        assert n == 3, "the datagrams that fit, none of them cut, in contiguous slots"
        assert [ring.packet(k) for k in range(n)] == [p for p in payloads if len(p) <= 2048]
        assert all(ring.peer(k) == sender.getsockname()[:2] for k in range(n))
        assert ring.truncated == 3
        assert recv_batch(ours, ring, 16) == 0


def test_udp_send_refuses_bad_offsets_and_peers_before_anything_moves(family: int) -> None:
    ring = PacketRing(8, 256)
    with udp_socket(family) as ours, udp_socket(family) as receiver, \
            UdpPortIO(ours) as port:
        for i in range(3):
            ring.set_peer(ring.push(bytes([i]) * 10), receiver.getsockname()[:2])
        ring.peers[1]["family"] = socket.AF_UNIX
        for send in (lambda: send_batch(ours, ring, 0, 3), lambda: port.send_batch(ring, 0, 3)):
            with pytest.raises(ValueError, match="slot 1 holds a peer of address family"):
                send()
        ring.set_peer(1, receiver.getsockname()[:2])
        ring.offsets[2] = 5
        for send in (lambda: send_batch(ours, ring, 0, 3), lambda: port.send_batch(ring, 0, 3)):
            with pytest.raises(ValueError, match="slot 2 holds a length of 10 bytes at offset 5"):
                send()
        with pytest.raises(BlockingIOError):
            receiver.recv(65536)    # not even the slots before the bad one went out
        ring.offsets[2] = 80 + 256 - 10     # the end of the slot: valid
        assert send_batch(ours, ring, 0, 3) == 3
        assert [len(p) for p, _ in recv_all(receiver, 3)] == [10, 10, 10]


def test_udp_port_io_refuses_what_is_not_a_udp_socket() -> None:
    a, b = datagram_pair()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with a, b, tcp:
        for sock in (a, tcp):
            with pytest.raises(ValueError, match="not a UDP socket"):
                UdpPortIO(sock)
    with udp_socket(socket.AF_INET) as sock:
        with pytest.raises(ValueError, match="carry no virtio-net header"):
            recv_batch(sock, PacketRing(4, 256), 4, vnet_hdr=True)
        port = UdpPortIO(sock)
    port.recv_batch(PacketRing(4, 256), 4)     # its own dup() outlives the caller's socket
    port.close()
    port.close()
    with pytest.raises(ValueError, match="closed"):
        port.recv_batch(PacketRing(4, 256), 4)


def test_a_forwarder_moves_datagrams_between_two_udp_port_ios(family: int) -> None:
    """Forwarder.add_port(..., port_io=...): the wire between two UDP sockets, the kernel's own
    socket on the other side. A datagram keeps its source as its slot's peer (a stage may change
    it), so out of the other port it goes back to its sender, from that port's address."""
    from tapengine import Forwarder
    from tapengine._forward import COUNTER_NAMES

    with udp_socket(family) as a, udp_socket(family) as b, udp_socket(family) as sender:
        forwarder = Forwarder("wire", budget=32)
        ports = [UdpPortIO(a), UdpPortIO(b)]
        for port in ports:
            forwarder.add_port(None, PacketRing(64, 2048), l2=False, port_io=port)
        with pytest.raises(BufferError, match="C loop uses it"):
            ports[0].close()
        thread = threading.Thread(target=forwarder.run)
        thread.start()
        try:
            sent = [os.urandom(1 + i * 61 % 1400) for i in range(50)]
            for payload in sent:
                sender.sendto(payload, a.getsockname())
            got = recv_all(sender, len(sent))
        finally:
            forwarder.stop()
            thread.join(timeout=30)
            forwarder.close()
        assert digest([p for p, _ in got]) == digest(sent)
        assert {source for _, source in got} == {b.getsockname()[:2]}
        counters = forwarder.counters
        rx, tx = COUNTER_NAMES.index("rx_packets"), COUNTER_NAMES.index("tx_packets")
        assert counters[0, rx] == counters[1, tx] == 50
        for port in ports:
            port.close()


def test_a_connected_udp_socket_receives_from_its_peer_with_the_peer_in_each_slot(
        family: int) -> None:
    ring = PacketRing(16, 2048)
    with udp_socket(family) as ours, udp_socket(family) as peer, udp_socket(family) as other:
        ours.connect(peer.getsockname())
        other.sendto(b"filtered by the kernel", ours.getsockname())
        sent = [os.urandom(100 + k) for k in range(5)]
        for payload in sent:
            peer.sendto(payload, ours.getsockname())
        got: list[bytes] = []
        while len(got) < len(sent):
            wait_until(lambda: select_readable(ours), 30, "a datagram")
            first = ring.tail
            n = recv_batch(ours, ring, 16)
            got += [ring.packet(first + k) for k in range(n)]
            assert all(ring.peer(first + k) == peer.getsockname()[:2] for k in range(n))
        assert got == sent
