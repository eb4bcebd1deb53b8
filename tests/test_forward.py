"""The forwarder's C loop, driven through SOCK_SEQPACKET socket pairs.

A seqpacket socket gives one datagram per read() and write(), as a tun/tap fd gives one packet,
so the loop runs unchanged and without privilege: the test holds the far end of every port, sends
frames in and reads what comes out. Checked against what was sent (bytes, counts, which port got
what), against scapy's checksums for segmented superframes, and against the kernel's errors
(EAGAIN on a full socket, EMSGSIZE on an oversize datagram).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netutil import sleeps_in_epoll_wait, wait_until
from tapengine import PacketRing
from tapengine._batchio import BatchIO
from tapengine._forward import (
    COUNTER_NAMES,
    DROP_REASONS,
    HISTOGRAM_BUCKETS,
    MAX_COALESCE_USECS,
    Forwarder,
    MacTable,
)
from tapengine._gso import REASONS
from tapengine._uring import UringIO

COL = {name: k for k, name in enumerate(COUNTER_NAMES)}
MAC = [f"02:00:00:00:00:{k:02x}" for k in range(8)]
BROADCAST = "ff:ff:ff:ff:ff:ff"


def frame(dst: str, src: str, payload: bytes = b"x" * 46) -> bytes:
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + \
        b"\x88\xb5" + payload


class Harness:
    """A forwarder over socket pairs: ``send(port, data)`` in, ``recv_all(port)`` out."""

    forwarder: Forwarder

    def __init__(self, forwarder: Forwarder, nports: int, *, vnet_hdr: bool = False,
                 sndbuf: int | None = None, slot_size: int = 65536 + 128) -> None:
        self.forwarder = forwarder
        self.inner: list[socket.socket] = []
        self.outer: list[socket.socket] = []
        for _ in range(nports):
            inner, outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            inner.setblocking(False)
            outer.setblocking(False)
            if sndbuf:
                inner.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            forwarder.add_port(inner.fileno(), PacketRing(64, slot_size), vnet_hdr=vnet_hdr)
            self.inner.append(inner)
            self.outer.append(outer)
        self.thread = threading.Thread(target=forwarder.run)

    def send(self, port: int, data: bytes) -> None:
        self.outer[port].send(data)

    def recv_all(self, port: int) -> list[bytes]:
        """Every frame the forwarder wrote to ``port`` for what was sent in, and nothing more."""
        self.wait_idle()
        got: list[bytes] = []
        while True:
            try:
                got.append(self.outer[port].recv(70000))
            except BlockingIOError:
                return got

    def wait_idle_on(self, socks: list[socket.socket], timeout: float = 30.0) -> None:
        """``wait_idle`` for the ports of ``socks`` only."""
        def idle() -> bool:
            unread, _, _ = select.select(socks, [], [], 0)
            return not unread and sleeps_in_epoll_wait(self.thread)

        wait_until(idle, timeout, "the forwarder to read every frame sent in and go idle")

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the forwarder has read every frame sent in and sleeps in epoll_wait.

        It sleeps only after passes over every port found nothing to do, and a write to a socket
        pair is complete when it returns: everything it will write for the frames sent so far is
        then waiting in the sockets.
        """
        def idle() -> bool:
            unread, _, _ = select.select(self.inner, [], [], 0)
            return not unread and sleeps_in_epoll_wait(self.thread)

        wait_until(idle, timeout, "the forwarder to read every frame sent in and go idle")

    def counter(self, port: int, name: str) -> int:
        return int(self.forwarder.counters[port, COL[name]])

    def wait_rx(self, port: int, packets: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.counter(port, "rx_packets") >= packets, timeout,
                   f"port {port} to read {packets} packets")

    def close(self) -> None:
        self.forwarder.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the forwarder did not stop"
        self.forwarder.close()
        for sock in self.inner + self.outer:
            sock.close()


@contextmanager
def running(mode: str, nports: int, **kwargs: object) -> Iterator[Harness]:
    harness = Harness(Forwarder(mode), nports, **kwargs)  # type: ignore[arg-type]
    harness.thread.start()
    try:
        yield harness
    finally:
        harness.close()


def drop_total(h: Harness, port: int) -> int:
    return sum(h.counter(port, "drop_" + reason) for reason in DROP_REASONS)


# -- wire ------------------------------------------------------------------------------------

def test_wire_forwards_both_ways_byte_for_byte() -> None:
    a_to_b = [frame(MAC[1], MAC[0], bytes([k]) * (60 + k)) for k in range(50)]
    b_to_a = [frame(MAC[0], MAC[1], bytes([k]) * (100 + k)) for k in range(30)]
    with running("wire", 2) as h:
        for data in a_to_b:
            h.send(0, data)
        for data in b_to_a:
            h.send(1, data)
        assert h.recv_all(1) == a_to_b
        assert h.recv_all(0) == b_to_a
        assert h.counter(0, "rx_packets") == h.counter(1, "tx_packets") == len(a_to_b)
        assert h.counter(0, "rx_bytes") == h.counter(1, "tx_bytes") == sum(map(len, a_to_b))
        assert h.counter(1, "rx_packets") == h.counter(0, "tx_packets") == len(b_to_a)
        assert drop_total(h, 0) == drop_total(h, 1) == 0


def test_wire_over_either_backend_forwards_the_same_bytes_and_closes_it(
        batch_io: BatchIO) -> None:
    frames = [frame(MAC[1], MAC[0], bytes([k]) * (60 + k)) for k in range(100)]
    h = Harness(Forwarder("wire", io=batch_io), 2)
    h.thread.start()
    try:
        for data in frames:
            h.send(0, data)
        assert h.recv_all(1) == frames
        assert h.counter(1, "tx_packets") == len(frames)
        if isinstance(batch_io, UringIO):
            assert batch_io.stats()["submitted"] > 0
    finally:
        h.close()
    if isinstance(batch_io, UringIO):
        assert batch_io.closed


def test_coalescing_waits_after_a_wakeup_that_found_little_and_loses_nothing(
        batch_io: BatchIO) -> None:
    with pytest.raises(ValueError, match="coalesce_usecs"):
        Forwarder("wire", coalesce_usecs=MAX_COALESCE_USECS + 1)
    frames = [frame(MAC[1], MAC[0], bytes([k]) * (60 + k)) for k in range(100)]
    h = Harness(Forwarder("wire", io=batch_io, coalesce_usecs=200), 2)
    assert h.forwarder.coalesce_usecs == 200
    h.thread.start()
    try:
        h.send(0, frames[0])        # one frame after a sleep: a wakeup that found little
        wait_until(lambda: h.forwarder.coalesced[0] >= 1, 30, "a coalescing wait")
        for data in frames[1:]:
            h.send(0, data)
        assert h.recv_all(1) == frames
        assert h.counter(1, "tx_packets") == len(frames) and drop_total(h, 1) == 0
    finally:
        h.close()


def test_batch_histogram_counts_every_batch() -> None:
    with running("wire", 2) as h:
        for k in range(200):
            h.send(0, frame(MAC[1], MAC[0], bytes([k % 256]) * 50))
        assert len(h.recv_all(1)) == 200
        hist = h.forwarder.histogram
        assert hist.shape == (2, len(HISTOGRAM_BUCKETS))
        assert int(hist[0].sum()) == h.counter(0, "rx_batches") > 0
        sizes = np.array([1 << b for b in range(len(HISTOGRAM_BUCKETS))])
        assert int((hist[0] * sizes).sum()) <= 200      # lower bound of each bucket


def test_counters_are_a_live_view_not_a_copy() -> None:
    with running("wire", 2) as h:
        view = h.forwarder.counters
        h.send(0, frame(MAC[1], MAC[0]))
        h.wait_rx(0, 1)
        assert view[0, COL["rx_packets"]] == 1


def test_full_egress_is_counted_as_dropped_not_lost() -> None:
    sent = 2000
    with running("wire", 2, sndbuf=4096) as h:     # nobody reads port 1: its socket fills up
        for k in range(sent):
            while True:
                try:
                    h.send(0, frame(MAC[1], MAC[0], k.to_bytes(4, "big") * 12))
                    break
                except BlockingIOError:
                    time.sleep(0.001)
        h.wait_rx(0, sent)
        delivered = len(h.recv_all(1))
        assert h.counter(1, "drop_full") > 0
        assert h.counter(1, "tx_packets") == delivered
        assert h.counter(1, "tx_packets") + h.counter(1, "drop_full") == sent


def test_refused_write_is_a_tx_error_and_the_next_packet_still_goes() -> None:
    with running("wire", 2, sndbuf=4096) as h:
        h.send(0, frame(MAC[1], MAC[0], b"\0" * 20000))   # larger than the egress can ever take
        h.send(0, frame(MAC[1], MAC[0]))
        h.wait_rx(0, 2)
        got = h.recv_all(1)
        assert got == [frame(MAC[1], MAC[0])]
        assert h.counter(1, "drop_tx_error") == 1
        assert h.counter(1, "last_errno") != 0


def test_a_frame_longer_than_its_slot_is_dropped_as_truncated_and_the_next_one_goes() -> None:
    long, short = frame(MAC[1], MAC[0], b"L" * 400), frame(MAC[1], MAC[0])
    with running("wire", 2, slot_size=256) as h:
        h.send(0, long)
        h.send(0, short)
        wait_until(lambda: h.counter(0, "drop_truncated") == 1, 30, "the long frame's drop")
        h.wait_rx(0, 1)
        assert h.recv_all(1) == [short]                 # nothing cut, nothing lost silently
        assert h.counter(0, "rx_packets") == h.counter(1, "tx_packets") == 1


def test_stop_before_run_returns_at_once() -> None:
    forwarder = Forwarder("wire")
    forwarder.stop()
    thread = threading.Thread(target=forwarder.run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        forwarder.run()
    forwarder.close()


def test_wire_refuses_a_third_port_and_a_ring_smaller_than_the_budget() -> None:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
    try:
        forwarder = Forwarder("wire", budget=32)
        with pytest.raises(ValueError, match="fewer than the budget"):
            forwarder.add_port(pairs[0][0].fileno(), PacketRing(16, 2048))
        forwarder.add_port(pairs[0][0].fileno(), PacketRing(32, 2048))
        forwarder.add_port(pairs[1][0].fileno(), PacketRing(32, 2048))
        with pytest.raises(ValueError, match="at most 2"):
            forwarder.add_port(pairs[2][0].fileno(), PacketRing(32, 2048))
        forwarder.close()
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_port_whose_reads_keep_failing_goes_down_with_the_errno_and_the_worker_sleeps() -> None:
    # A listening seqpacket socket with a connection waiting is readable for ever, and every
    # read() of it fails with ENOTCONN: a port that can never be read again, as a dead io_uring
    # or EBUSY make one. The old loop counted rx_errors and spun on it for ever.
    good_inner, good_outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + f"tapengine-test-{os.getpid()}-{threading.get_native_id()}")
    listener.listen(1)
    caller = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    caller.connect(listener.getsockname())
    forwarder = Forwarder("wire")
    for sock in (good_inner, listener):
        sock.setblocking(False)
        forwarder.add_port(sock.fileno(), PacketRing(64, 2048))
    thread = threading.Thread(target=forwarder.run)
    thread.start()
    try:
        wait_until(lambda: not forwarder.port_up(1), 30, "the failing port to go down")
        assert forwarder.down_errno(1) == errno.ENOTCONN
        assert forwarder.counters[1, COL["rx_errors"]] > 0
        assert forwarder.port_up(0)
        wait_until(lambda: sleeps_in_epoll_wait(thread), 30, "the worker to sleep in epoll_wait")
        good_outer.send(frame(MAC[1], MAC[0]))         # the other port is still served
        wait_until(lambda: forwarder.counters[0, COL["rx_packets"]] == 1, 30, "a read")
        assert forwarder.counters[1, COL["drop_port_down"]] == 1
    finally:
        forwarder.stop()
        thread.join(30)
        forwarder.close()
        for sock in (good_inner, good_outer, listener, caller):
            sock.close()


def test_a_forwarder_whose_every_port_failed_raises_instead_of_looking_alive() -> None:
    # The io_uring belongs to the thread that used it first (this one): the worker gets EBUSY on
    # every batch, on every port, and can never forward again.
    uring = UringIO(64)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    try:
        for inner, _ in pairs:
            inner.setblocking(False)
        uring.recv_batch(pairs[0][0].fileno(), PacketRing(64, 2048), 1)     # owned here now
        forwarder = Forwarder("wire", io=uring)
        for inner, _ in pairs:
            forwarder.add_port(inner.fileno(), PacketRing(64, 2048))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                forwarder.run()
            except OSError as exc:
                failure.append(exc)

        thread = threading.Thread(target=run, daemon=True)   # the old loop never returned
        thread.start()
        pairs[0][1].send(frame(MAC[1], MAC[0]))         # port 0 readable: the loop must read
        thread.join(30)
        assert not thread.is_alive(), "the worker spins on ports it can never serve"
        (exc,) = failure
        assert exc.errno == errno.EBUSY and "every port is down" in str(exc)
        assert [forwarder.down_errno(k) for k in range(2)] == [errno.EBUSY] * 2
        forwarder.close()
    finally:
        uring.close()
        for inner, outer in pairs:
            inner.close()
            outer.close()


def test_the_forwarder_serves_its_own_dup_so_a_reused_fd_number_gets_nothing() -> None:
    with running("wire", 2) as h:
        decoy, decoy_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        number = h.inner[1].fileno()
        h.inner[1].close()                              # the caller closes its fd ...
        os.dup2(decoy.fileno(), number)                 # ... and the number goes to another file
        try:
            data = frame(MAC[1], MAC[0])
            h.send(0, data)
            h.wait_rx(0, 1)
            h.wait_idle_on([h.inner[0]])
            assert h.outer[1].recv(70000) == data       # still the port's own socket
            decoy_peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                decoy_peer.recv(70000)                  # nothing written to the unrelated file
        finally:
            os.close(number)
            decoy.close()
            decoy_peer.close()
            h.inner[1] = socket.socket()                # something for close() to close


def test_a_ring_cannot_be_closed_or_resized_while_a_forwarder_uses_it() -> None:
    inner, outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ring = PacketRing(64, 2048)
    forwarder = Forwarder("wire")
    try:
        forwarder.add_port(inner.fileno(), ring)
        with pytest.raises(BufferError, match="forwarder"):
            ring.close()
        with pytest.raises(BufferError, match="forwarder"):
            ring.resize(128)
        with pytest.raises(ValueError, match="already serves"):
            Forwarder("wire").add_port(inner.fileno(), ring)
        before = set(os.listdir("/proc/self/fd"))
        forwarder.close()               # gives the ring back; closes its epoll, eventfd, dup
        assert len(before - set(os.listdir("/proc/self/fd"))) == 3
        ring.resize(128)
        ring.close()
    finally:
        forwarder.close()
        inner.close()
        outer.close()


# -- switch ----------------------------------------------------------------------------------

def test_switch_floods_unknown_unicast_then_forwards_only_to_the_learned_port() -> None:
    with running("switch", 4) as h:
        first = frame(MAC[1], MAC[0], b"first" * 10)
        h.send(0, first)
        for port in (1, 2, 3):
            assert h.recv_all(port) == [first]          # unknown: flooded to every other port
        assert h.recv_all(0) == []                      # never back to the ingress port
        assert h.counter(0, "flooded") == 1
        reply = frame(MAC[0], MAC[1], b"reply" * 10)
        h.send(1, reply)                                # MAC[0] was learned on port 0
        assert h.recv_all(0) == [reply]
        assert h.recv_all(2) == h.recv_all(3) == []
        again = frame(MAC[1], MAC[0], b"again" * 10)
        h.send(0, again)                                # MAC[1] was learned on port 1
        assert h.recv_all(1) == [again]
        assert h.recv_all(2) == h.recv_all(3) == []
        assert h.counter(0, "flooded") == 1
        assert h.counter(1, "flooded") == 0
        table = h.forwarder.table
        assert table.lookup_mac(MAC[0]) == 0
        assert table.lookup_mac(MAC[1]) == 1
        assert table.lookup_mac(MAC[2]) is None


def test_switch_floods_broadcast_to_every_other_port() -> None:
    with running("switch", 3) as h:
        h.send(1, frame(MAC[0], MAC[1]))                # teach: MAC[1] behind port 1
        h.recv_all(0)
        h.recv_all(2)
        bcast = frame(BROADCAST, MAC[0])
        h.send(0, bcast)
        assert h.recv_all(1) == [bcast]
        assert h.recv_all(2) == [bcast]


@pytest.mark.parametrize("source", ["01:00:5e:00:00:01", BROADCAST, "00:00:00:00:00:00"],
                         ids=["multicast", "broadcast", "zero"])
def test_switch_drops_a_frame_from_an_invalid_source_and_learns_nothing(source: str) -> None:
    with running("switch", 3) as h:
        h.send(1, frame(MAC[0], MAC[1]))                # MAC[1] behind port 1
        h.recv_all(0)
        h.recv_all(2)
        h.send(2, frame(MAC[1], source))                # known destination: still dropped
        h.send(2, frame(BROADCAST, source))
        h.wait_rx(2, 2)
        assert h.recv_all(0) == h.recv_all(1) == []
        assert h.counter(2, "drop_bad_src_mac") == 2
        assert h.forwarder.table.lookup_mac(source) is None
        to_source = frame(source, MAC[1])               # so a frame to it is never unicast
        h.send(1, to_source)
        assert h.recv_all(0) == h.recv_all(2) == [to_source]


def test_switch_never_relays_reserved_group_addresses_but_floods_bpdus_with_stp_off() -> None:
    reserved = [f"01:80:c2:00:00:{k:02x}" for k in range(16)]
    with running("switch", 3) as h:
        for k, dst in enumerate(reserved[1:], start=1):
            h.send(0, frame(dst, f"02:00:00:00:01:{k:02x}"))
        h.wait_rx(0, 15)
        assert h.recv_all(1) == h.recv_all(2) == []
        assert h.counter(0, "drop_reserved_group") == 15
        assert h.counter(0, "flooded") == 0
        bpdu = frame(reserved[0], MAC[0])               # the kernel bridge relays it (STP off)
        h.send(0, bpdu)
        assert h.recv_all(1) == h.recv_all(2) == [bpdu]
        table = h.forwarder.table
        assert table.lookup_mac("02:00:00:00:01:0e") == 0    # LLDP's source is learned,
        assert table.lookup_mac("02:00:00:00:01:01") is None  # a pause frame's is not


def test_switch_filters_a_frame_whose_destination_is_behind_its_ingress() -> None:
    with running("switch", 3) as h:
        h.send(0, frame(MAC[1], MAC[0]))
        h.recv_all(1)
        h.recv_all(2)
        h.send(0, frame(MAC[0], MAC[2]))                # MAC[0] sits behind port 0 itself
        h.wait_rx(0, 2)
        assert h.recv_all(1) == h.recv_all(2) == []
        assert h.counter(0, "drop_filtered") == 1


def test_switch_counts_a_runt_as_malformed() -> None:
    with running("switch", 2) as h:
        h.send(0, b"\x01" * 10)
        h.send(0, frame(MAC[1], MAC[0]))
        h.wait_rx(0, 2)
        assert h.recv_all(1) == [frame(MAC[1], MAC[0])]
        assert h.counter(0, "drop_malformed") == 1


def test_switch_station_move_updates_the_table() -> None:
    with running("switch", 3) as h:
        h.send(0, frame(BROADCAST, MAC[5]))
        h.wait_rx(0, 1)
        assert h.forwarder.table.lookup_mac(MAC[5]) == 0
        h.send(2, frame(BROADCAST, MAC[5]))
        h.wait_rx(2, 1)
        assert h.forwarder.table.lookup_mac(MAC[5]) == 2
        assert h.forwarder.table.stats["moved"] == 1


def test_mac_table_is_bounded_and_evicts_the_least_recently_seen() -> None:
    table = MacTable(capacity=8, ageing=300.0)
    for k in range(100):
        table.learn_mac(f"02:00:00:00:{k // 256:02x}:{k % 256:02x}", k % 4)
    assert len(table) <= table.capacity == 8
    assert table.stats["evicted"] == 100 - len(table)
    assert table.lookup_mac("02:00:00:00:00:63") == 99 % 4      # the newest stays


def test_mac_table_ages_entries_out() -> None:
    table = MacTable(capacity=16, ageing=0.05)
    table.learn_mac(MAC[3], 2)
    assert table.lookup_mac(MAC[3]) == 2
    time.sleep(0.2)         # CLOCK_MONOTONIC_COARSE ticks every few ms: well past 50 ms
    assert table.lookup_mac(MAC[3]) is None
    assert len(table) == 0


def test_mac_table_forget_drops_the_entries_of_one_port() -> None:
    table = MacTable()
    table.learn_mac(MAC[0], 0)
    table.learn_mac(MAC[1], 1)
    table.forget(0)
    assert [row[:2] for row in table.entries()] == [(MAC[1], 1)]


def test_mac_table_refuses_a_port_number_outside_the_port_array() -> None:
    table = MacTable()
    for port in (64, 1000, -1):
        with pytest.raises(ValueError, match="between 0 and 63"):
            table.learn_mac(MAC[0], port)
        with pytest.raises(ValueError, match="between 0 and 63"):
            table.forget(port)
    table.learn_mac(MAC[0], 63)
    assert table.lookup_mac(MAC[0]) == 63


def test_switch_floods_a_frame_to_a_mac_learned_on_a_port_it_does_not_have() -> None:
    with running("switch", 3) as h:
        h.forwarder.table.learn_mac(MAC[7], 40)
        data = frame(MAC[7], MAC[0])
        h.send(0, data)
        assert h.recv_all(1) == h.recv_all(2) == [data]
        assert h.counter(0, "flooded") == 1


def test_mac_table_ages_by_signed_difference_a_stamp_just_after_now_is_young() -> None:
    # Another worker may stamp an entry a tick after the ``now`` this one read: unsigned, that
    # entry was 584 years old (aged out, flooded, evicted first).
    table = MacTable(capacity=4, ageing=300.0)
    now = MacTable._now_ns()
    table._learn_at(MAC[0], 1, now + 1_000_000)
    assert table._lookup_at(MAC[0], now) == 1
    for k in range(1, 4):                           # fill the bucket's other ways, then one more:
        table._learn_at(MAC[k], 2, now)             # the eviction takes the oldest, not MAC[0]
    table._learn_at(MAC[4], 2, now)
    assert table._lookup_at(MAC[0], now) == 1
    assert table._lookup_at(MAC[0], now + 301 * 10**9) is None      # and it does age out


def test_mac_table_entries_holds_no_lock_while_it_makes_python_objects(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tapengine._forward as forward_module

    table = MacTable()
    for k in range(8):
        table.learn_mac(MAC[k], k)
    learned_meanwhile: list[bool] = []
    original = forward_module.format_mac
    learner = threading.Thread(target=table.learn_mac, args=("02:00:00:00:00:ff", 1))

    def format_while_a_worker_learns(mac: int) -> str:
        if not learned_meanwhile:       # the first row: a worker takes the table's lock now
            learner.start()
            learner.join(10)            # blocks for ever (until entries() returns) if it is held
            learned_meanwhile.append(not learner.is_alive())
        return original(mac)

    monkeypatch.setattr(forward_module, "format_mac", format_while_a_worker_learns)
    rows = table.entries()
    learner.join()
    assert learned_meanwhile == [True]
    listed = [row[:2] for row in rows]
    assert {(MAC[k], k) for k in range(8)} <= set(listed)
    assert len(listed) == len(set(listed))          # each MAC at most once


# -- virtio-net headers ----------------------------------------------------------------------

def vnet_header(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
                csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return struct.pack("=BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def tcp_superframe(payload_len: int, mss: int) -> tuple[bytes, bytes]:
    """A TSO superframe as the kernel hands it over: partial checksum, hdr_len left at 0."""
    packet = Ether(dst=MAC[1], src=MAC[0]) / IP(src="10.77.0.1", dst="10.77.0.2") / \
        TCP(sport=5000, dport=6000, seq=1000, flags="PA") / (b"z" * payload_len)
    raw = bytearray(bytes(packet))
    raw[14 + 20 + 16:14 + 20 + 18] = b"\0\0"       # a partial checksum, as left by the sender
    header = vnet_header(flags=1, gso_type=1, hdr_len=0, gso_size=mss,
                         csum_start=34, csum_offset=16)
    return header, bytes(raw)


def test_vnet_ports_pass_header_and_superframe_through_with_hdr_len_recomputed() -> None:
    header, superframe = tcp_superframe(10000, 1400)
    with running("wire", 2, vnet_hdr=True) as h:
        h.send(0, header + superframe)
        (got,) = h.recv_all(1)
        assert got[10:] == superframe                           # one superframe, not split
        assert got[:2] == header[:2] and got[4:10] == header[4:]  # flags, gso, csums kept
        assert struct.unpack_from("=H", got, 2)[0] == 14 + 20 + 20   # hdr_len recomputed
        assert h.counter(1, "tx_bytes") == len(superframe)


def test_vnet_to_plain_port_segments_in_software_with_valid_checksums() -> None:
    header, superframe = tcp_superframe(10000, 1400)
    forwarder = Forwarder("wire")
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    for (inner, outer), vnet in zip(pairs, (True, False), strict=True):
        inner.setblocking(False)
        outer.setblocking(False)
        forwarder.add_port(inner.fileno(), PacketRing(64, 65536 + 128), vnet_hdr=vnet)
    h = Harness.__new__(Harness)
    h.forwarder, h.inner, h.outer = forwarder, [p[0] for p in pairs], [p[1] for p in pairs]
    h.thread = threading.Thread(target=forwarder.run)
    h.thread.start()
    try:
        h.send(0, header + superframe)
        segments = h.recv_all(1)
        assert len(segments) == 8                                # ceil(10000 / 1400)
        payload = b""
        for raw in segments:
            assert len(raw) <= 14 + 20 + 20 + 1400
            ether = Ether(raw)
            del ether[IP].chksum, ether[TCP].chksum             # let scapy compute them
            rebuilt = Ether(bytes(ether))
            assert rebuilt[IP].chksum == Ether(raw)[IP].chksum
            assert rebuilt[TCP].chksum == Ether(raw)[TCP].chksum
            payload += bytes(Ether(raw)[TCP].payload)
        assert payload == b"z" * 10000
        assert h.counter(1, "segmented") == 1
        assert h.counter(1, "tx_packets") == 8
    finally:
        h.close()


def test_malformed_vnet_header_is_counted_and_forwarding_goes_on() -> None:
    good = frame(MAC[1], MAC[0])
    with running("wire", 2, vnet_hdr=True) as h:
        h.send(0, vnet_header(flags=0x80) + good)               # flag bits that do not exist
        h.send(0, vnet_header(flags=1, csum_start=5000, csum_offset=16) + good)
        h.send(0, vnet_header() + good)
        h.wait_rx(0, 3)
        assert h.recv_all(1) == [vnet_header() + good]
        assert h.counter(0, "drop_bad_header") == 2
        reasons = {REASONS[k]: int(n) for k, n in enumerate(h.forwarder.gso_drops) if n}
        assert sum(reasons.values()) == 2
        assert "bad_flags" in reasons
