"""The generator and the sink (pyx/pktgen.pyx).

Frames are checked against scapy (fields and checksums) and against an independent numpy
checksum; the sink's accounting against faults injected on purpose and against a reference model
of its definitions; pacing against a token bucket replayed over the frames' own timestamps; and,
with privilege, the whole path through a kernel bridge against the kernel's own counters.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from conftest import inside_netns
from netutil import wait_until
from tapengine import PacketRing, TunQueue, UringIO, open_queue
from tapengine._batchio import BatchIO
from tapengine._pktgen import MAGIC, Generator, Sink, monotonic
from tapengine.traffic import GenConfig, GenResult, SinkResult, parse_rate, parse_size

PROBE = np.dtype([("magic", ">u4"), ("seq", ">u4"), ("sent_ns", ">u8"), ("flow", ">u2")])


def probe_of(payload: bytes) -> np.void:
    return np.frombuffer(payload[: PROBE.itemsize], dtype=PROBE)[0]


def generate(config: GenConfig, count: int) -> PacketRing:
    ring = PacketRing(1 << max(4, math.ceil(math.log2(count))), 2048)
    config.generator().fill(ring, count)
    return ring


# -- frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("mode", ["tap", "tun"])
def test_frames_parse_with_scapy_with_valid_checksums(mode: str, ipv6: bool) -> None:
    config = GenConfig(
        mode=mode, ipv6=ipv6, sizes=parse_size("100,300"), flows=3,
        src_mac="02:77:00:00:00:0a", dst_mac="02:77:00:00:00:0b",
        src_ip="fd77::10" if ipv6 else "10.77.3.4", dst_ip="fd77::20" if ipv6 else "10.77.5.6",
        src_port=4000, dst_port=5001,
    )
    before = monotonic()
    ring = generate(config, 12)
    after = monotonic()
    seqs: dict[int, list[int]] = {}
    for i in range(12):
        data = ring.packet(i)
        packet = Ether(data) if mode == "tap" else (IPv6(data) if ipv6 else IP(data))
        if mode == "tap":
            assert packet.src == "02:77:00:00:00:0a" and packet.dst == "02:77:00:00:00:0b"
            assert len(data) == (100 if i % 2 == 0 else 300) - 4
        else:
            assert len(data) == (100 if i % 2 == 0 else 300) - 18
        l3 = packet[IPv6] if ipv6 else packet[IP]
        udp = packet[UDP]
        assert (l3.src, l3.dst) == (config.addresses[0], config.addresses[1])
        assert udp.dport == 5001
        flow = i % 3
        assert udp.sport == 4000 + flow
        probe = probe_of(bytes(udp.payload))
        assert probe["magic"] == MAGIC
        assert probe["flow"] == flow
        assert before <= probe["sent_ns"] <= after
        seqs.setdefault(flow, []).append(int(probe["seq"]))
        # scapy recomputes what we wrote incrementally
        sent_udp = udp.chksum
        del udp.chksum
        if not ipv6:
            sent_ip = l3.chksum
            del l3.chksum
        rebuilt = packet.__class__(bytes(packet))
        assert rebuilt[UDP].chksum == sent_udp != 0
        if not ipv6:
            assert rebuilt[IP].chksum == sent_ip
            assert rebuilt[IP].flags == "DF" and rebuilt[IP].ttl == 64
        else:
            assert rebuilt[IPv6].hlim == 64
    assert seqs == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}


def _udp_checksum_ok(frames: np.ndarray, lengths: np.ndarray, l4: int, ipv6: bool) -> np.ndarray:
    """RFC 768 from scratch in numpy: the sum over pseudo-header and datagram folds to 0xffff."""
    words = frames.astype(np.uint64)
    ok = np.zeros(len(frames), dtype=bool)
    for row, length in enumerate(lengths.tolist()):
        data = words[row, :length]
        l3 = l4 - (40 if ipv6 else 20)
        src_dst = data[l3 + 8: l3 + 40] if ipv6 else data[l3 + 12: l3 + 20]
        udp = data[l4:length]
        if len(udp) % 2:
            udp = np.append(udp, np.uint64(0))
        total = int((src_dst[0::2] << 8).sum() + src_dst[1::2].sum())
        total += int((udp[0::2] << 8).sum() + udp[1::2].sum()) + 17 + (length - l4)
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        ok[row] = total == 0xFFFF
    return ok


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_incremental_checksum_stays_right_across_70000_packets(ipv6: bool) -> None:
    """Sequence numbers cross 0xffff; timestamps change every word. Odd lengths included."""
    config = GenConfig(ipv6=ipv6, sizes=parse_size("99,128"), flows=1)
    gen = config.generator()
    ring = PacketRing(1024, 2048)
    l4 = 14 + (40 if ipv6 else 20)
    checked = 0
    while checked < 70_000:
        ring.clear()
        gen.fill(ring, 1024)
        frames = ring.frames
        ok = _udp_checksum_ok(frames[:, :128], ring.lengths.copy(), l4, ipv6)
        del frames
        assert ok.all(), f"bad UDP checksum in packets {checked + np.flatnonzero(~ok)}"
        checked += 1024
    assert gen.flow_seq[0] == checked


def test_imix_frames_follow_the_pattern() -> None:
    config = GenConfig(sizes=parse_size("imix"))
    gen = config.generator()
    ring = PacketRing(64, 2048)
    gen.fill(ring, 24)
    assert ring.lengths[:24].tolist() == gen.lengths[:24].tolist()
    assert sorted(set(ring.lengths[:24].tolist())) == [60, 566, 1514]


def test_generator_refuses_bad_parameters_before_building() -> None:
    with pytest.raises(ValueError, match="lengths must be"):
        Generator([40])
    with pytest.raises(ValueError, match="flows"):
        Generator([60], flows=0)
    with pytest.raises(ValueError, match="bytes"):
        Generator([80], ipv6=True, src_ip=b"\x0a\x00\x00\x01")


# -- sink accounting against injected faults ---------------------------------------------------


def deliver(
    sink: Sink, source: PacketRing, order: Sequence[int], now_ns: int | None = None
) -> None:
    """Copy frames ``order`` (indices into ``source``) into a fresh ring and feed the sink."""
    ring = PacketRing(1 << max(4, math.ceil(math.log2(max(len(order), 2)))), 2048)
    for index in order:
        ring.push(source.packet(index))
    sink.consume(ring, ring.head, len(order), now_ns)


def test_sink_finds_exactly_the_injected_losses_duplicates_and_reorderings() -> None:
    flows, per_flow = 2, 100
    source = generate(GenConfig(flows=flows), flows * per_flow)

    def at(flow: int, seq: int) -> int:
        return seq * flows + flow

    order = list(range(flows * per_flow))
    for dropped in (at(0, 5), at(0, 6), at(1, 10)):
        order.remove(dropped)
    order.insert(order.index(at(0, 20)) + 1, at(0, 20))            # duplicate, back to back
    order.insert(order.index(at(1, 60)) + 1, at(1, 40))            # duplicate, late
    i, j = order.index(at(1, 30)), order.index(at(1, 31))          # swap 30 and 31
    order[i], order[j] = order[j], order[i]
    order.remove(at(0, 40))                                        # 40 arrives after 45
    order.insert(order.index(at(0, 45)) + 1, at(0, 40))

    sink = Sink()
    deliver(sink, source, order)
    result = SinkResult.of(sink)
    flow0, flow1 = result.per_flow
    assert (flow0.lost, flow0.duplicates, flow0.reordered) == (2, 1, 1)
    assert (flow1.lost, flow1.duplicates, flow1.reordered) == (1, 1, 1)
    assert flow0.received == per_flow - 2 + 1
    assert flow1.received == per_flow - 1 + 1
    assert (result.lost, result.duplicates, result.reordered) == (3, 2, 2)
    assert result.probe_packets == len(order) and result.other_packets == 0


def test_sink_counts_no_loss_past_the_last_frame_that_arrived() -> None:
    source = generate(GenConfig(), 10)
    sink = Sink()
    deliver(sink, source, range(8))     # 8 and 9 lost at the tail: invisible to a sink alone
    assert SinkResult.of(sink).lost == 0
    deliver(sink, source, [9])          # ... until a later frame shows the gap
    assert SinkResult.of(sink).lost == 1


def test_sink_counts_foreign_frames_separately() -> None:
    source = generate(GenConfig(), 4)
    ring = PacketRing(16, 2048)
    foreign = [
        bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.77.0.2")),
        bytes(Ether() / IP(dst="10.77.0.2") / UDP(dport=9) / (b"\x00" * 40)),   # no magic
        bytes(Ether() / IP(dst="10.77.0.2", flags="MF") / UDP() / source.packet(0)[42:]),
        b"\x02" * 10,                                                          # runt
    ]
    for frame in [source.packet(0), *foreign, source.packet(1)]:
        ring.push(frame)
    sink = Sink()
    sink.consume(ring, 0, len(ring))
    result = SinkResult.of(sink)
    assert (result.packets, result.probe_packets, result.other_packets) == (6, 2, 4)
    assert result.other_bytes == sum(len(frame) for frame in foreign)
    assert result.lost == 0


def test_sink_bounds_its_flow_table() -> None:
    source = generate(GenConfig(flows=8), 16)
    sink = Sink(max_flows=4)
    deliver(sink, source, range(16))
    result = SinkResult.of(sink)
    assert result.flows_seen == 4 and result.untracked == 8 and result.probe_packets == 16


def test_sink_refuses_a_length_past_the_slot_before_counting() -> None:
    ring = generate(GenConfig(), 4)
    ring.lengths[2] = 60014
    sink = Sink()
    with pytest.raises(ValueError, match="slot 2 holds a length of 60014 bytes"):
        sink.consume(ring, 0, 4)
    assert SinkResult.of(sink).packets == 0


def test_generator_refuses_templates_whose_length_was_set_past_the_slot() -> None:
    gen = GenConfig().generator()
    gen.ring.lengths[0] = 60014
    with pytest.raises(ValueError, match="slot 0 holds a length of 60014"):
        gen.fill(PacketRing(16, 65536), 1)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(ValueError, match="slot 0 holds"):
        gen.send(a.fileno(), count=1, vnet_hdr=False)


def test_sink_takes_first_indices_past_2_to_the_32() -> None:
    source = generate(GenConfig(), 6)
    ring = PacketRing(8, 2048)
    ring.head = ring.tail = (1 << 32) - 2
    for k in range(6):
        ring.push(source.packet(k))
    sink = Sink()
    sink.consume(ring, ring.head, 2)
    sink.consume(ring, ring.head + 2, 4)   # 2**32 from Python: OverflowError before
    result = SinkResult.of(sink)
    assert (result.probe_packets, result.lost, result.reordered) == (6, 0, 0)


def test_sink_follows_sequence_numbers_across_the_32_bit_wrap() -> None:
    source = generate(GenConfig(), 6)
    frames = source.frames
    for slot, seq in enumerate([0, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 0, 1]):
        frames[slot, 42 + 4: 42 + 8] = np.frombuffer(seq.to_bytes(4, "big"), np.uint8)
    del frames
    sink = Sink()
    sink.consume(source, 0, 6)
    (flow,) = SinkResult.of(sink).per_flow
    assert flow.highest_seq == 2**32 + 1
    assert (flow.duplicates, flow.reordered) == (0, 0)
    assert flow.lost == 2**32 + 2 - 6


def reference_accounting(seqs: Sequence[int]) -> tuple[int, int, int]:
    """The sink's definitions, written the obvious way: (lost, duplicates, reordered)."""
    seen: set[int] = set()
    highest = -1
    duplicates = reordered = 0
    for seq in seqs:
        if seq in seen:
            duplicates += 1
        elif seq < highest:
            reordered += 1
        seen.add(seq)
        highest = max(highest, seq)
    return highest + 1 - len(seen), duplicates, reordered


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=59), min_size=1, max_size=120))
def test_sink_agrees_with_the_reference_model(seqs: list[int]) -> None:
    source = generate(GenConfig(), 60)
    sink = Sink()
    deliver(sink, source, seqs)
    (flow,) = SinkResult.of(sink).per_flow
    assert (flow.lost, flow.duplicates, flow.reordered) == reference_accounting(seqs)


def test_sink_latency_percentiles_match_the_injected_delays() -> None:
    source = generate(GenConfig(flows=2), 2000)
    rng = np.random.default_rng(3)
    delays = rng.lognormal(mean=11, sigma=1.0, size=2000).astype(np.int64)
    sink = Sink()
    for index, delay in enumerate(delays):
        sent = int(probe_of(source.packet(index)[42:])["sent_ns"])
        sink.consume(source, index, 1, now_ns=sent + int(delay))
    latency = SinkResult.of(sink).latency
    assert latency is not None and latency.count == 2000
    ordered = np.sort(delays)
    for q, got in ((50, latency.p50_ns), (90, latency.p90_ns), (99, latency.p99_ns)):
        exact = int(ordered[math.ceil(q / 100 * len(ordered)) - 1])
        assert abs(got - exact) <= exact / 32 + 1, (q, got, exact)
    assert latency.max_ns == ordered[-1] and latency.min_ns == ordered[0]
    assert latency.mean_ns == pytest.approx(delays.mean())


def test_sink_does_not_bin_timestamps_from_the_future() -> None:
    source = generate(GenConfig(), 3)
    sink = Sink()
    sink.consume(source, 0, 3, now_ns=1)
    counters = sink.counters[0]
    assert counters["negative_latency"] == 3 and counters["latency_count"] == 0


# -- pacing, and running on a descriptor -------------------------------------------------------


@contextlib.contextmanager
def datagram_pair(sndbuf: int | None = None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A non-blocking AF_UNIX datagram pair: one read() or write() is one frame, as on a tun.

    ``sndbuf`` sets the first socket's send buffer: what it holds unread before a write gets
    EAGAIN (on a connected pair only the sender's buffer limits a writer).
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        if sndbuf is not None:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        yield a, b


def datagrams_that_fit(sndbuf: int, size: int) -> int:
    """How many ``size``-byte datagrams a pair with this send buffer takes before EAGAIN, as the
    kernel counts them for plain send() calls."""
    with datagram_pair(sndbuf) as (tx, _):
        written = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                tx.send(bytes(size))
                written += 1
    return written


def probe_times(path: os.PathLike[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(sequence numbers, send times in ns) of the ``length``-byte tap frames written one after
    another to the file ``path``."""
    probe = np.dtype({"names": ["seq", "sent_ns"], "formats": [">u4", ">u8"],
                      "offsets": [42 + 4, 42 + 8], "itemsize": length})
    records = np.fromfile(path, dtype=probe)
    return records["seq"].astype(np.int64), records["sent_ns"].astype(np.int64)


# A generator is "held off the CPU" across a gap between two of its frames this much longer than
# the frames' own spacing: no correct generator that is running leaves such a gap.
STALL_NS = 2_000_000


def check_token_bucket(start_ns: int, times_ns: np.ndarray, costs: np.ndarray, rate: int,
                       depth: int, batch: int) -> None:
    """Frames sent at ``times_ns`` by a generator paced at ``rate`` tokens/s (packets or bits)
    from ``start_ns`` on, replayed through a token bucket of ``depth`` tokens, empty at the start,
    written the obvious way. Both checks hold however the threads were scheduled:

    * never faster: every frame found the tokens it cost in the bucket (give or take one batch:
      frames admitted just before the generator is held off the CPU leave after it, beside the
      full bucket it finds then);
    * never slower, except while held off the CPU: of the tokens earned, at most one batch's
      worth went unspent, plus whatever was earned during stalls (gaps longer than ``STALL_NS``
      beyond the frames' spacing), which a full bucket may have lost.
    """
    times = np.concatenate([[start_ns], times_ns]).astype(np.int64)
    slack = (batch + 1) * float(costs.max())
    level = lowest = 0.0
    for k, cost in enumerate(costs.tolist()):
        level = min(depth, level + rate * int(times[k + 1] - times[k]) / 1e9) - cost
        lowest = min(lowest, level)
    assert lowest >= -slack, f"a frame was sent {-lowest:.0f} tokens before the bucket held them"
    gaps = np.diff(times)
    spacing = float(costs.mean()) / rate * 1e9
    stalled = int(gaps[gaps > spacing + STALL_NS].sum())
    unused = rate * int(times[-1] - times[0]) / 1e9 - float(costs.sum())
    allowed = slack + rate * stalled / 1e9
    assert unused <= allowed, (
        f"{unused:.0f} tokens earned but unused: a generator that keeps its rate leaves at most "
        f"{allowed:.0f} ({stalled / 1e6:.1f} ms held off the CPU)")


def test_fixed_packet_rate_follows_its_token_bucket(tmp_path: Path) -> None:
    gen = GenConfig(rate=parse_rate("20kpps")).generator()
    path = tmp_path / "frames"
    with open(path, "wb") as file:
        start = monotonic()
        sent = gen.send(file, count=10_000)
    assert sent == 10_000 and path.stat().st_size == 10_000 * 60
    seqs, times = probe_times(path, 60)
    assert np.array_equal(seqs, np.arange(10_000))
    check_token_bucket(start, times, np.ones(sent), 20_000, gen.burst, gen.batch)


def test_fixed_bit_rate_counts_the_bytes_written(tmp_path: Path) -> None:
    gen = GenConfig(rate=parse_rate("8mbit"), sizes=parse_size("1004")).generator()
    path = tmp_path / "frames"
    with open(path, "wb") as file:
        start = monotonic()
        sent = gen.send(file, duration=0.5)
    assert sent > 0
    assert int(gen.counters[0]["bytes"]) == path.stat().st_size == sent * 1000
    seqs, times = probe_times(path, 1000)
    assert np.array_equal(seqs, np.arange(sent))
    assert times[-1] - start <= 0.5e9       # every frame inside the duration
    # 8 Mbit/s of 1000-byte writes: 1000 frames a second, each costing 8000 bits
    check_token_bucket(start, times, np.full(sent, 8000), 8_000_000, gen.burst, gen.batch)


def test_a_late_generator_catches_up_by_one_burst_at_most() -> None:
    gen = Generator([60], rate=1000, burst=10)
    with open(os.devnull, "wb") as devnull:
        gen.send(devnull, count=1)
        time.sleep(0.1)                 # 100 packets' worth of time passes unused (or more)
        assert gen.send(devnull, duration=0.0005) <= 10 + 1


def test_stop_ends_an_unlimited_send_from_another_thread() -> None:
    gen = GenConfig(rate=parse_rate("50kpps")).generator()
    returned: list[int] = []
    with open(os.devnull, "wb") as devnull:
        sender = threading.Thread(target=lambda: returned.append(gen.send(devnull)))
        sender.start()
        try:
            wait_until(lambda: gen.counters[0]["packets"] >= 1000, 30,
                       "the unlimited send to be under way")
            assert sender.is_alive() and not returned      # nothing but stop() ends it
        finally:
            gen.stop()
            sender.join(30)
    assert not sender.is_alive(), "stop() did not end the send"
    assert returned == [int(gen.counters[0]["packets"])]


def test_generator_to_sink_over_a_datagram_pair_loses_nothing() -> None:
    gen = GenConfig(flows=4, rate=parse_rate("50kpps")).generator()
    with datagram_pair() as (tx, rx), Sink(max_flows=4) as sink:
        reader = threading.Thread(target=sink.run, args=(rx,), kwargs={"count": 4000,
                                                                        "duration": 60})
        reader.start()
        sent = gen.send(tx, count=4000)
        reader.join()
        result = SinkResult.of(sink)
    assert sent == 4000
    assert result.probe_packets == 4000 and result.lost == 0
    assert [flow.received for flow in result.per_flow] == [1000] * 4
    assert result.latency is not None and result.latency.count == 4000


def test_generator_and_sink_take_either_backend(batch_io: BatchIO) -> None:
    # the generator writes through the fixture's backend; the sink reads in its own thread through
    # one of the same kind (a UringIO belongs to the thread that first uses it)
    gen = GenConfig(flows=2, rate=parse_rate("50kpps")).generator()
    with datagram_pair() as (tx, rx), Sink(max_flows=2) as sink, type(batch_io)() as rx_io:
        reader = threading.Thread(target=sink.run, args=(rx,),
                                  kwargs={"count": 1000, "duration": 60, "io": rx_io})
        reader.start()
        sent = gen.send(tx, count=1000, io=batch_io)
        reader.join()
        result = SinkResult.of(sink)
    assert sent == 1000
    assert result.probe_packets == 1000 and result.lost == 0
    if isinstance(rx_io, UringIO) and isinstance(batch_io, UringIO):
        assert rx_io.stats()["submitted"] > 0 and batch_io.stats()["submitted"] >= 1000


# The smallest send buffer the kernel grants (it doubles the value asked for and enforces a
# minimum): a few 1400-byte datagrams fill it.
SMALL_SNDBUF = 4096


def test_flat_out_send_waits_when_the_descriptor_is_full() -> None:
    """The reader starts only once the generator has found the socket full and tried again, so
    the wait is exercised on every run: the generator must have written exactly what the socket
    holds, and then deliver every frame, once and in order, as the reader makes room."""
    count = 3000
    fits = datagrams_that_fit(SMALL_SNDBUF, 1400)
    gen = Generator([1400])
    written_when_full: list[int] = []
    with datagram_pair(SMALL_SNDBUF) as (tx, rx), Sink() as sink:

        def read_once_the_socket_is_full() -> None:
            try:
                # the second refusal comes after a wait: the first one's count is final by then
                wait_until(lambda: gen.counters[0]["would_block"] >= 2, 30,
                           "the generator to find the socket full")
                written_when_full.append(int(gen.counters[0]["packets"]))
                sink.run(rx, count=count, duration=60)
            except BaseException:
                gen.stop()          # nobody will make room: end the send, the test fails below
                raise

        reader = threading.Thread(target=read_once_the_socket_is_full)
        reader.start()
        sent = gen.send(tx, count=count)
        reader.join()
        result = SinkResult.of(sink)
    assert written_when_full == [fits]
    assert sent == count and result.probe_packets == count
    assert (result.lost, result.duplicates, result.reordered) == (0, 0, 0)


def test_sink_stops_on_duration_idle_and_stop() -> None:
    with datagram_pair() as (tx, rx), Sink() as sink:
        started = time.monotonic()
        assert sink.run(rx, duration=0.2) == 0
        assert 0.19 < time.monotonic() - started < 30

        Generator([60]).send(tx, count=5)
        started = time.monotonic()
        assert sink.run(rx, idle=0.1, duration=60) == 5
        assert time.monotonic() - started < 30      # idle ended it, not the duration

        stopper = threading.Timer(0.1, sink.stop)
        stopper.start()
        started = time.monotonic()
        sink.run(rx, duration=60)
        assert time.monotonic() - started < 30      # stop() ended it, not the duration
        stopper.join()


def test_sink_run_reports_a_bad_descriptor_as_oserror() -> None:
    with Sink() as sink:
        read_end, write_end = os.pipe()
        os.close(write_end)
        os.close(read_end)
        with pytest.raises(OSError):
            sink.run(read_end, duration=0.1)


# -- privileged: through a kernel bridge, against the kernel's counters ------------------------


class BridgedTaps:
    """Taps ``a`` and ``b`` in a bridge inside a fresh namespace; frames written to ``a`` are
    flooded to ``b`` (the destination MAC is never a source, so never learned)."""

    def __init__(self, netns: str, a: TunQueue, b: TunQueue) -> None:
        self.netns, self.a, self.b = netns, a, b

    def stats(self, queue: TunQueue) -> dict[str, int]:
        from pyroute2 import IPRoute

        with inside_netns(self.netns), IPRoute() as ipr:
            (link,) = ipr.get_links(ifname=queue.name)
            return dict(link.get_attr("IFLA_STATS64"))


# Frames a tap holds for its reader (the kernel's default is 500). Tests that must lose nothing
# send at most this many frames, so the reader may fall behind by all of them: how fast it gets
# the CPU cannot decide the outcome.
TXQLEN = 10_000


def check_sink_saw_the_generators_rate(result: SinkResult, generated: GenResult) -> None:
    """The sink measured the rate the generator sent at: its first-to-last time differs from the
    generator's only by how much the frames' latencies differ (plus 1 ms for the batches both
    stamp with one clock reading), however the threads were scheduled."""
    assert result.latency is not None
    spread = (result.latency.max_ns - result.latency.min_ns) / 1e9 + 0.001
    assert abs(result.elapsed_s - generated.elapsed_s) <= spread, (result, generated)


@pytest.fixture
def bridged_taps(make_netns: Callable[[str], str], prefix: str) -> Iterator[BridgedTaps]:
    from pyroute2 import IPRoute

    netns = make_netns("ns")
    with inside_netns(netns):
        # no IPv6 autoconfiguration or IGMP: nothing but our frames on the taps
        for knob, value in (("ipv6/conf/all/disable_ipv6", "1"),
                            ("ipv6/conf/default/disable_ipv6", "1"),
                            ("ipv4/igmp_link_local_mcast_reports", "0")):
            with open(f"/proc/sys/net/{knob}", "w") as file:
                file.write(value)
        # non-persistent taps created inside the namespace: they vanish with their fds
        a = open_queue(prefix + "a", "tap")
        b = open_queue(prefix + "b", "tap")
    with a, b:
        with inside_netns(netns), IPRoute() as ipr:
            ipr.link("add", ifname=prefix + "br", kind="bridge", br_stp_state=0)
            (bridge,) = ipr.link_lookup(ifname=prefix + "br")
            for queue in (a, b):
                (index,) = ipr.link_lookup(ifname=queue.name)
                ipr.link("set", index=index, master=bridge, state="up", txqlen=TXQLEN)
            ipr.link("set", index=bridge, state="up")
        # The tests compare counter deltas and count probe frames: anything the kernel sent while
        # the ports came up is counted on both sides or ignored, so nothing needs draining.
        yield BridgedTaps(netns, a, b)


def run_sink_beside(sink: Sink, queue: TunQueue, **limits: float) -> threading.Thread:
    thread = threading.Thread(target=sink.run, args=(queue,), kwargs=limits)
    thread.start()
    return thread


@pytest.mark.privileged
def test_bridge_path_counts_match_the_generator_and_the_kernel(bridged_taps: BridgedTaps) -> None:
    pair = bridged_taps
    gen = GenConfig(flows=4, sizes=parse_size("imix"), rate=parse_rate("50kpps")).generator()
    a_before, b_before = pair.stats(pair.a), pair.stats(pair.b)
    with Sink() as sink:
        reader = run_sink_beside(sink, pair.b, count=8000, duration=120)
        sent = gen.send(pair.a, count=8000)      # fewer than tap b holds: nothing can be lost
        reader.join()
        result = SinkResult.of(sink)
    a_after, b_after = pair.stats(pair.a), pair.stats(pair.b)
    written = int(gen.counters[0]["bytes"])
    assert sent == 8000
    assert a_after["rx_packets"] - a_before["rx_packets"] == sent
    assert a_after["rx_bytes"] - a_before["rx_bytes"] == written
    assert b_after["tx_packets"] - b_before["tx_packets"] == result.packets
    assert b_after["tx_bytes"] - b_before["tx_bytes"] == result.bytes
    assert result.probe_packets == sent and result.probe_bytes == written
    assert (result.lost, result.duplicates, result.reordered) == (0, 0, 0)
    assert [flow.received for flow in result.per_flow] == [2000] * 4


@pytest.mark.privileged
def test_flat_out_losses_seen_by_the_sink_are_the_kernels_drops(bridged_taps: BridgedTaps) -> None:
    pair = bridged_taps
    gen = GenConfig(flows=2).generator()
    before = pair.stats(pair.a), pair.stats(pair.b)
    with Sink(nslots=64) as sink:
        sent = gen.send(pair.a, count=30_000)      # the sink starts late: tap b's queue overflows
        sink.run(pair.b, idle=0.2, duration=120)
        result = SinkResult.of(sink)
    after = pair.stats(pair.a), pair.stats(pair.b)
    dropped = sum(after[i][key] - before[i][key]
                  for i, key in ((0, "rx_dropped"), (1, "tx_dropped")))
    tail = sum(int(gen.flow_seq[flow.flow]) - flow.highest_seq - 1 for flow in result.per_flow)
    assert dropped > 0
    assert result.probe_packets == sent - dropped
    assert result.lost + tail == dropped
    assert result.duplicates == 0


@pytest.mark.privileged
def test_fixed_rate_through_the_bridge_is_lossless_in_order_and_on_rate(
    bridged_taps: BridgedTaps,
) -> None:
    pair = bridged_taps
    gen = GenConfig(flows=4, rate=parse_rate("20kpps")).generator()
    with Sink() as sink:
        reader = run_sink_beside(sink, pair.b, count=TXQLEN, duration=120)
        start = monotonic()
        sent = gen.send(pair.a, count=TXQLEN)       # half a second at 20 kpps
        reader.join()
        result = SinkResult.of(sink)
    generated = GenResult.of(gen)
    assert result.probe_packets == sent == TXQLEN
    assert (result.lost, result.duplicates, result.reordered) == (0, 0, 0)
    assert result.latency is not None and result.latency.count == sent
    check_sink_saw_the_generators_rate(result, generated)
    # never faster than the bucket allows (its pacing is checked exactly by the tests above)
    assert sent - 1 <= 20_000 * (int(gen.counters[0]["last_ns"]) - start) / 1e9 + gen.burst


@pytest.mark.privileged
def test_ten_seconds_at_a_fixed_rate_through_forward_lose_nothing(
    make_netns: Callable[[str], str], prefix: str
) -> None:
    """gen -> tap g -> bridge 1 -> tap a => tapengine wire => tap b -> bridge 2 -> tap s -> sink."""
    from pyroute2 import IPRoute

    from tapengine.engine import Engine, open_port

    netns = make_netns("ns")
    with inside_netns(netns):
        for knob, value in (("ipv6/conf/all/disable_ipv6", "1"),
                            ("ipv6/conf/default/disable_ipv6", "1"),
                            ("ipv4/igmp_link_local_mcast_reports", "0")):
            with open(f"/proc/sys/net/{knob}", "w") as file:
                file.write(value)
        g, s = open_queue(prefix + "g", "tap"), open_queue(prefix + "s", "tap")
        a, b = open_port(prefix + "a"), open_port(prefix + "b")
    with g, s, a, b:
        with inside_netns(netns), IPRoute() as ipr:
            for bridge, ports in (("br1", ("g", "a")), ("br2", ("b", "s"))):
                ipr.link("add", ifname=prefix + bridge, kind="bridge", br_stp_state=0)
                (master,) = ipr.link_lookup(ifname=prefix + bridge)
                for port in ports:
                    (index,) = ipr.link_lookup(ifname=prefix + port)
                    ipr.link("set", index=index, master=master, state="up", txqlen=TXQLEN)
                ipr.link("set", index=master, state="up")
        gen = GenConfig(flows=4, sizes=parse_size("imix"), rate=parse_rate("20kpps")).generator()
        count = 200_000                         # ten seconds at 20 kpps
        with Engine([a, b], "wire"), Sink() as sink:
            # the sink ends on the last probe frame, not on a pause: the kernel's own frames and
            # a late start or a slow pass of the forwarder do not decide when it stops
            reader = run_sink_beside(sink, s, count=count, duration=300)
            start = monotonic()
            sent = gen.send(g, count=count)
            reader.join()
            result = SinkResult.of(sink)
    assert result.probe_packets == sent == count
    assert (result.lost, result.duplicates, result.reordered) == (0, 0, 0)
    assert all(flow.reordered == 0 for flow in result.per_flow) and result.flows_seen == 4
    check_sink_saw_the_generators_rate(result, GenResult.of(gen))
    assert sent - 1 <= 20_000 * (int(gen.counters[0]["last_ns"]) - start) / 1e9 + gen.burst
