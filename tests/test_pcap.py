"""pcapng capture and pcap/pcapng replay (tapengine._pcapng, tapengine capture/replay).

The files we write are read by tshark; the files we read are written by scapy; captured frames are
compared with what the kernel's sockets sent, replayed frames with what a packet socket in the
namespace received (SHA-256 digests of the bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from fwdnet import Host, add_neighbor, attach, in_netns, quiet_ipv6, udp_send
from netutil import wait_until
from tapengine._pcapng import (
    INBOUND,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    MIN_BUFFER,
    OUTBOUND,
    PcapngWriter,
    PcapReader,
    Replayer,
)
from tapengine._ring import PacketRing
from tapengine.errors import PcapFormatError
from tapengine.pcap import CaptureOptions

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None,
                                reason="needs tshark (make system-deps)")

DST_MAC = "02:77:00:00:00:02"


def frame(i: int, size: int = 60) -> bytes:
    """An Ethernet frame whose bytes depend on ``i``."""
    head = bytes.fromhex("027700000002027700000001" "88b5") + i.to_bytes(4, "big")
    return head + bytes((i + k) & 0xFF for k in range(size - len(head)))


def fill(ring: PacketRing, frames: list[bytes]) -> None:
    view, lengths = ring.frames, ring.lengths
    for i, data in enumerate(frames):
        view[i, : len(data)] = list(data)
        lengths[i] = len(data)
    del view, lengths


def tshark(path: str | Path, *fields: str, options: tuple[str, ...] = ()) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(path), *options, "-T", "fields", "-E",
                          "separator=|", *[arg for f in fields for arg in ("-e", f)]],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tapengine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tapengine", *args], capture_output=True,
                          text=True, timeout=timeout)


# -- the writer, read by tshark ----------------------------------------------------------------


def test_tshark_reads_interfaces_nanoseconds_direction_snaplen_and_statistics(
        tmp_path: Path) -> None:
    ring = PacketRing(64, 2048)
    frames = [frame(i, 60 + i) for i in range(20)]
    fill(ring, frames)
    path = tmp_path / "a.pcapng"
    writer = PcapngWriter(path, [("portA", LINKTYPE_ETHERNET, False),
                                 ("portB", LINKTYPE_ETHERNET, False)], snaplen=64,
                          comment="a test")
    assert writer.capture(ring, 0, 12, interface=0, ts_ns=1_700_000_000_123_456_789) == 12
    assert writer.capture(ring, 12, 8, interface=1) == 8
    assert writer.close({0: {"received": 12, "if_dropped": 3}}) == [str(path)]
    rows = tshark(path, "frame.interface_name", "frame.len", "frame.cap_len",
                  "frame.time_epoch", "frame.packet_flags_direction", "frame.interface_id")
    assert [r[0] for r in rows] == ["portA"] * 12 + ["portB"] * 8
    assert [int(r[1]) for r in rows] == [len(f) for f in frames]
    assert [int(r[2]) for r in rows] == [min(len(f), 64) for f in frames]
    assert rows[0][3] == "1700000000.123456789"          # if_tsresol 9: every digit kept
    assert {int(r[4], 0) for r in rows} == {1}              # inbound
    info = subprocess.run(["capinfos", "-M", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert "Number of stat entries = 1" in info and "a test" in info


def test_frames_read_back_byte_for_byte(tmp_path: Path) -> None:
    ring = PacketRing(64, 2048)
    frames = [frame(i, 60 + 7 * i) for i in range(40)]
    fill(ring, frames)
    path = tmp_path / "b.pcapng"
    with PcapngWriter(path, [("p", LINKTYPE_ETHERNET, False)]) as writer:
        writer.capture(ring, 0, 40)
    rows = tshark(path, "frame.protocols")
    assert len(rows) == 40
    with PcapReader(path) as reader:
        got = list(reader)
    assert [data for _, _, data, _ in got] == frames
    stamps = [ts for ts, _, _, _ in got]
    assert stamps == sorted(stamps) and stamps[0] > 1_600_000_000 * 10**9


def test_rotation_starts_new_files_each_one_complete(tmp_path: Path) -> None:
    ring = PacketRing(64, 2048)
    fill(ring, [frame(i, 1000) for i in range(64)])
    path = tmp_path / "r.pcapng"
    writer = PcapngWriter(path, [("p", LINKTYPE_ETHERNET, False)], rotate_bytes=100_000)
    for _ in range(5):
        writer.capture(ring, 0, 64)
        wait_until(lambda: writer.buffered == 0, 30, "the drain thread to write the batch")
    files = writer.close()
    assert files == [str(path), f"{path}1", f"{path}2", f"{path}3"]
    rows = [tshark(name, "frame.interface_name") for name in files]
    assert sum(map(len, rows)) == 320 and min(map(len, rows)) >= 1
    assert {r[0] for file_rows in rows for r in file_rows} == {"p"}
    assert all(os.path.getsize(name) <= 100_000 for name in files[:-1])


def test_a_full_buffer_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    """The file is a FIFO nobody reads yet: the drain thread blocks in write(), the buffer fills
    on purpose, and every frame after that is dropped, counted, without waiting."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    ring = PacketRing(64, 2048)
    fill(ring, [frame(i, 1500) for i in range(64)])
    writer = PcapngWriter(fifo, [("p", LINKTYPE_ETHERNET, False)], buffer_size=MIN_BUFFER)
    total = 64 * 40                      # 2.4 MB: more than the buffer and the pipe together
    captured = sum(writer.capture(ring, 0, 64) for _ in range(40))
    counters = writer.counters[0]
    assert 0 < captured < total
    assert int(counters["dropped"]) == total - captured == total - int(counters["packets"])
    chunks: list[bytes] = []

    def drain() -> None:
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 1 << 16):
            chunks.append(chunk)

    thread = threading.Thread(target=drain)
    thread.start()
    writer.close()
    thread.join(60)
    os.close(reader)
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"".join(chunks))
    with PcapReader(out) as check:
        assert check.scan()["packets"] == captured


@pytest.mark.parametrize("segment", [True, False])
def test_superframes_are_written_as_a_wire_carries_them_or_whole(tmp_path: Path,
                                                                 segment: bool) -> None:
    from test_gso import Shape, superframe

    header, data = superframe(Shape(), os.urandom(3000), 1000)
    ring = PacketRing(8, 65536)
    ring.store(0, data, header)
    path = tmp_path / "s.pcapng"
    options = CaptureOptions(str(path), superframes=not segment)
    with options.open([("p", LINKTYPE_ETHERNET, True)], command="test") as writer:
        writer.capture(ring, 0, 1)
    assert int(writer.counters[0]["superframes"]) == 1
    rows = tshark(path, "frame.len", "ip.checksum.status", "tcp.checksum.status",
                  "tcp.len", options=("-o", "ip.check_checksum:TRUE",
                                      "-o", "tcp.check_checksum:TRUE"))
    if segment:             # three segments, their checksums good (1), as on a wire
        assert rows == [["1054", "1", "1", "1000"]] * 3
    else:                   # the superframe as it came, its checksum left partial
        assert [(int(r[0]), r[3]) for r in rows] == [(len(data), "3000")]
    comment = subprocess.run(["capinfos", "-k", str(path)], capture_output=True, text=True,
                             check=True).stdout
    assert ("as the segments a wire would carry" in comment) == segment


def test_writer_refuses_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    with pytest.raises(ValueError, match="snaplen"):
        PcapngWriter(path, [("p", 1, False)], snaplen=0)
    with pytest.raises(ValueError, match="link type"):
        PcapngWriter(path, [("p", 105, False)])
    with pytest.raises(ValueError, match="interfaces"):
        PcapngWriter(path, [])
    with PcapngWriter(path, [("p", LINKTYPE_RAW, False)]) as writer, \
            pytest.raises(ValueError, match="interface"):
        writer.capture(PacketRing(8, 128), 0, 1, interface=1)


# -- the reader, against scapy's writers -------------------------------------------------------


@pytest.mark.parametrize("kind", ["pcap", "pcap-ns", "pcapng"])
def test_reader_reads_what_scapy_writes(tmp_path: Path, kind: str) -> None:
    from scapy.all import IP, UDP, Ether, wrpcap, wrpcapng

    packets = []
    for i in range(25):
        pkt = Ether(dst=DST_MAC) / IP(dst="10.77.0.2") / UDP(dport=9) / (bytes([i]) * (i + 1))
        pkt.time = 1_700_000_000 + i / 8
        packets.append(pkt)
    path = tmp_path / f"s.{kind}"
    if kind == "pcapng":
        wrpcapng(str(path), packets)
    else:
        wrpcap(str(path), packets, nano=kind == "pcap-ns")
    with PcapReader(path) as reader:
        summary = reader.scan()
        got = list(reader)
    assert summary["packets"] == 25 and summary["linktypes"] == {LINKTYPE_ETHERNET}
    assert [data for _, _, data, _ in got] == [bytes(p) for p in packets]
    assert [ts for ts, _, _, _ in got] == [1_700_000_000 * 10**9 + i * 125_000_000
                                           for i in range(25)]


def _replay_into_a_socket(replayer: Replayer, expected: int) -> list[bytes]:
    """Run ``replayer`` into one end of a datagram socketpair (one write, one datagram);
    returns the datagrams read from the other end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    got: list[bytes] = []

    def read() -> None:
        theirs.settimeout(30)
        while len(got) < expected:
            got.append(theirs.recv(65536))

    reader = threading.Thread(target=read)
    reader.start()
    with ours, theirs:
        assert replayer.run(ours.fileno()) == expected
        reader.join(60)
    return got


def test_replay_loops_over_the_file_and_skips_what_does_not_fit(tmp_path: Path) -> None:
    ring = PacketRing(64, 2048)
    frames = [frame(i, 110 + 50 * i) for i in range(10)]
    fill(ring, frames)
    path = tmp_path / "l.pcapng"
    with PcapngWriter(path, [("p", LINKTYPE_ETHERNET, False)]) as writer:
        writer.capture(ring, 0, 10)
    replayer = Replayer(PcapReader(path), l2=True, speed=0, loops=3, slot_size=400)
    fits = [f for f in frames if len(f) <= 400]
    assert _replay_into_a_socket(replayer, 3 * len(fits)) == fits * 3
    counters = replayer.counters[0]
    assert (int(counters["loops"]), int(counters["too_long"])) == (3, 3 * (10 - len(fits)))
    # nothing fits: even "forever" (loops=0) ends after one pass
    nothing = Replayer(PcapReader(path), l2=True, speed=0, loops=0, slot_size=64)
    assert _replay_into_a_socket(nothing, 0) == []
    assert int(nothing.counters[0]["too_long"]) == 10


def test_replay_at_a_rate_sends_every_packet_in_order(tmp_path: Path) -> None:
    ring = PacketRing(64, 2048)
    frames = [frame(i) for i in range(50)]
    fill(ring, frames)
    path = tmp_path / "r.pcapng"
    with PcapngWriter(path, [("p", LINKTYPE_ETHERNET, False)]) as writer:
        writer.capture(ring, 0, 50)
    replayer = Replayer(PcapReader(path), l2=True, rate=100_000, loops=2)
    assert _replay_into_a_socket(replayer, 100) == frames * 2


def _snapped_pcap(path: Path, data: bytes, origlen: int) -> None:
    """A pcap file of one record keeping ``data`` of a packet of ``origlen`` bytes."""
    path.write_bytes(_pcap_header() + struct.pack("<IIII", 1, 0, len(data), origlen) + data)


def test_replay_counts_the_snapped_packets_it_writes(tmp_path: Path) -> None:
    """A record that keeps 40 bytes of a 92-byte frame goes out as those 40 bytes (what the
    other end of the socket reads), and is counted as snapped on every pass."""
    whole = frame(1, 92)
    _snapped_pcap(tmp_path / "s.pcap", whole[:40], len(whole))
    replayer = Replayer(PcapReader(tmp_path / "s.pcap"), l2=True, speed=0, loops=2)
    assert _replay_into_a_socket(replayer, 2) == [whole[:40]] * 2
    assert int(replayer.counters[0]["snapped"]) == 2
    _snapped_pcap(tmp_path / "w.pcap", whole, len(whole))
    replayer = Replayer(PcapReader(tmp_path / "w.pcap"), l2=True, speed=0)
    assert _replay_into_a_socket(replayer, 1) == [whole]
    assert int(replayer.counters[0]["snapped"]) == 0


def _pcap_header(linktype: int = 1) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)


def _pcapng_with_epb(*, caplen: int, origlen: int) -> bytes:
    """A section header, an Ethernet interface and one enhanced packet block."""
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    idb = struct.pack("<IIHHII", 1, 20, LINKTYPE_ETHERNET, 0, 0, 20)
    data = bytes((caplen + 3) & ~3)
    epb_len = 32 + len(data)
    epb = struct.pack("<IIIIIII", 6, epb_len, 0, 0, 0, caplen, origlen) + data
    return shb + idb + epb + struct.pack("<I", epb_len)


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty file"),
    (b"GIF89a and then some", "not a pcap or pcapng"),
    (_pcap_header() + struct.pack("<IIII", 0, 0, 100, 100) + b"x" * 50, "truncated"),
    (_pcap_header()[:20], "truncated"),
    (b"\x0a\x0d\x0d\x0a" + struct.pack("<IIHHq", 29, 0x1A2B3C4D, 1, 0, -1) + b"\0" * 8,
     "impossible length"),
    (b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 28) + b"\x11\x22\x33\x44" + b"\0" * 16,
     "byte-order magic"),
    # more bytes captured than the packet had: caplen 92, original length 10
    (_pcap_header() + struct.pack("<IIII", 0, 0, 92, 10) + bytes(92),
     "more bytes than its original length"),
    (_pcapng_with_epb(caplen=92, origlen=10), "more bytes than its original length"),
])
def test_malformed_files_are_refused_naming_the_problem(tmp_path: Path, content: bytes,
                                                        words: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(PcapFormatError, match=words), PcapReader(path) as reader:
        reader.scan()


# -- capture and replay through taps, checked against the kernel -------------------------------


@dataclass
class Net:
    netns: str
    a: str          # addressed: the kernel sends UDP out of it (to a static neighbour)
    b: str          # unaddressed: replayed frames arrive here; a packet socket listens
    tun: str


@pytest.fixture
def net(make_netns: Callable[[str], str], prefix: str) -> Iterator[Net]:
    netns = make_netns("pc")
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                    "net.ipv4.igmp_link_local_mcast_reports=0"], check=True)
    a, b, tun = prefix + "a", prefix + "b", prefix + "t"
    with IPRoute(netns=netns) as ipr:
        for name, mode in ((a, "tap"), (b, "tap"), (tun, "tun")):
            ipr.link("add", ifname=name, kind="tuntap", mode=mode)
            (index,) = ipr.link_lookup(ifname=name)
            ipr.link("set", index=index, state="up")
        (index,) = ipr.link_lookup(ifname=a)
        ipr.addr("add", index=index, address="10.77.0.1", prefixlen=24)
        ipr.neigh("add", dst="10.77.0.2", lladdr=DST_MAC, ifindex=index, state="permanent")
    yield Net(netns, a, b, tun)


def _incoming(listener: socket.socket, count: int) -> list[bytes]:
    """The next ``count`` frames a packet socket sees arrive (what the kernel sends is left)."""
    frames = []
    while len(frames) < count:
        data, address = listener.recvfrom(65536)
        if address[2] != socket.PACKET_OUTGOING:
            frames.append(data)
    return frames


def _send_udp(netns: str, payloads: list[bytes]) -> None:
    sock = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        for payload in payloads:
            sock.sendto(payload, ("10.77.0.2", 9))


@pytest.mark.privileged
def test_capture_then_replay_reproduce_the_kernels_frames(net: Net, tmp_path: Path) -> None:
    payloads = [os.urandom(16 + 13 * i) for i in range(60)]
    path = tmp_path / "c.pcapng"
    capture = subprocess.Popen(
        [sys.executable, "-m", "tapengine", "capture", net.a, "--netns", net.netns, "-w",
         str(path), "-c", "60", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert capture.stdout is not None
        assert capture.stdout.readline().startswith("capturing on ")
        _send_udp(net.netns, payloads)
        out, err = capture.communicate(timeout=60)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.communicate()
    assert capture.returncode == 0, err
    result = json.loads(out)
    assert (result["captured"], result["dropped"], result["kernel_dropped"]) == (60, 0, 0)
    rows = tshark(path, "frame.interface_name", "udp.payload", "frame.time_epoch")
    assert {r[0] for r in rows} == {net.a}
    assert [digest(bytes.fromhex(r[1])) for r in rows] == [digest(p) for p in payloads]
    stamps = [r[2] for r in rows]
    assert stamps == sorted(stamps, key=lambda t: tuple(map(int, t.split("."))))
    with PcapReader(path) as reader:
        frames = [data for _, _, data, _ in reader]

    listener = in_netns(net.netns, socket.socket, socket.AF_PACKET, socket.SOCK_RAW,
                        socket.htons(0x0003))
    with listener:
        listener.bind((net.b, 0))
        listener.settimeout(30)
        replay = tapengine("replay", str(path), net.b, "--netns", net.netns, "--topspeed",
                           "--json")
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout)["packets"] == 60
        seen = _incoming(listener, 60)
    assert [digest(f) for f in seen] == [digest(f) for f in frames]


@pytest.mark.privileged
def test_replay_refuses_a_link_type_the_device_cannot_take(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "eth.pcapng"
    ring = PacketRing(8, 2048)
    fill(ring, [frame(1)])
    with PcapngWriter(path, [("p", LINKTYPE_ETHERNET, False)]) as writer:
        writer.capture(ring, 0, 1, flags=INBOUND)
    result = tapengine("replay", str(path), net.tun, "--netns", net.netns)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "link type 1 does not fit the device: a tun takes raw IP" in result.stderr
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 100)
    result = tapengine("replay", str(bad), net.b, "--netns", net.netns)
    assert result.returncode == 1 and "not a pcap or pcapng file" in result.stderr


@pytest.mark.privileged
def test_replay_says_how_many_packets_went_out_snapped(net: Net, tmp_path: Path) -> None:
    whole = frame(2, 92)
    _snapped_pcap(tmp_path / "s.pcap", whole[:40], len(whole))
    result = tapengine("replay", str(tmp_path / "s.pcap"), net.b, "--netns", net.netns)
    assert result.returncode == 0, result.stderr
    assert "0 too long, 1 snapped (written with fewer bytes than they had" in result.stdout
    result = tapengine("replay", str(tmp_path / "s.pcap"), net.b, "--netns", net.netns, "--json")
    summary = json.loads(result.stdout)
    assert (summary["packets"], summary["bytes"], summary["snapped"]) == (1, 40, 1)


def _receiver(host: Host, port: int = 47001) -> socket.socket:
    sock = in_netns(host.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host.ip, port))
    sock.settimeout(30)
    return sock


@pytest.mark.privileged
def test_forward_pcap_holds_what_the_kernel_sent_per_port_and_replays(
        make_netns: Callable[[str], str], prefix: str, tmp_path: Path) -> None:
    names = [prefix + "fa", prefix + "fb"]
    path = tmp_path / "fwd.pcapng"
    proc = subprocess.Popen([sys.executable, "-m", "tapengine", "forward", *names, "--pcap",
                             str(path), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sent = {names[0]: [os.urandom(20 + 7 * i) for i in range(40)],
            names[1]: [os.urandom(30 + 5 * i) for i in range(25)]}
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("forwarding ")
        hosts = []
        for k, name in enumerate(names):
            netns = make_netns(f"f{k}")
            quiet_ipv6(netns)
            hosts.append(attach(name, netns, f"10.77.0.{k + 1}"))
        add_neighbor(hosts[0], hosts[1])        # no ARP: the frames are the datagrams alone
        add_neighbor(hosts[1], hosts[0])
        for src, dst in (hosts, hosts[::-1]):
            with _receiver(dst) as sock:
                udp_send(src, dst, sent[src.ifname])
                assert [sock.recv(2048) for _ in sent[src.ifname]] == sent[src.ifname]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    # Both directions (the default): each frame inbound on its ingress port's interface, and
    # outbound on its egress port's, as the engine's counters say (rx of A == tx of B).
    assert "captured 130 frames" in err
    ports = {port["ifname"]: port["stats64"] for port in json.loads(out)["ports"]}
    rows = tshark(path, "frame.interface_name", "udp.payload", "frame.time_epoch",
                  "frame.packet_flags_direction")
    assert {int(r[3], 0) for r in rows} == {INBOUND, OUTBOUND}
    for name, other in (names, names[::-1]):
        inbound = [r for r in rows if r[0] == name and int(r[3], 0) == INBOUND]
        outbound = [r for r in rows if r[0] == other and int(r[3], 0) == OUTBOUND]
        assert len(inbound) == ports[name]["rx"]["packets"] == len(sent[name])
        assert len(outbound) == ports[other]["tx"]["packets"] == len(sent[name])
        expected = [digest(p) for p in sent[name]]
        assert [digest(bytes.fromhex(r[1])) for r in inbound] == expected
        assert [digest(bytes.fromhex(r[1])) for r in outbound] == expected
        for mine in (inbound, outbound):
            stamps = [tuple(map(int, r[2].split("."))) for r in mine]
            assert stamps == sorted(stamps)

    with PcapReader(path) as reader:
        frames = [data for _, _, data, _ in reader]
    netns = make_netns("r")
    quiet_ipv6(netns)
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname=prefix + "r", kind="tuntap", mode="tap")
        ipr.link("set", index=ipr.link_lookup(ifname=prefix + "r")[0], state="up")
    listener = in_netns(netns, socket.socket, socket.AF_PACKET, socket.SOCK_RAW,
                        socket.htons(0x0003))
    with listener:
        listener.bind((prefix + "r", 0))
        listener.settimeout(30)
        replay = tapengine("replay", str(path), prefix + "r", "--netns", netns, "--pps", "20000")
        assert replay.returncode == 0, replay.stderr
        seen = _incoming(listener, len(frames))
    assert [digest(f) for f in seen] == [digest(f) for f in frames]
