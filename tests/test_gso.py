"""Software segmentation, checksum completion and virtio-net header validation (pyx/gso.pyx).

The reference is scapy: it builds each superframe (with the partial checksum the kernel leaves:
the folded pseudo-header sum in the L4 checksum field) and, independently, every segment the
superframe must turn into, with all lengths and checksums computed by scapy. Our output must equal
those bytes, and every checksum in it is recomputed by scapy once more. One privileged test lets
the kernel's own TCP stack produce real superframes on a tap.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert, in4_pseudoheader
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_pseudoheader,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import checksum

from tapengine import PacketRing
from tapengine import _gso as gso
from tapengine.errors import MalformedPacketError

NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UFO, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 3, 4, 5, 0x80
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
             "C": 0x80}
MAC_A, MAC_B = "02:77:00:00:00:01", "02:77:00:00:00:02"
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=120)


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    """A ``struct virtio_net_hdr`` in host byte order."""
    return struct.pack("=BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


@dataclass(frozen=True)
class Shape:
    """Everything about a packet except its payload and per-segment fields."""

    ipv6: bool = False
    udp: bool = False
    l2: bool = True
    vlan: bool = False
    ip_options: bool = False       # IPv4 router alert option / IPv6 hop-by-hop + dest options
    tcp_options: bool = False

    @property
    def l4_layer(self):
        return UDP if self.udp else TCP

    @property
    def csum_field(self) -> int:
        return 6 if self.udp else 16

    def build(self, payload: bytes, *, ip_id=0x1234, seq=1000, flags=TCP_FLAGS["A"]):
        if self.ipv6:
            l3 = IPv6(src="fd77::1", dst="fd77::2", hlim=64)
            if self.ip_options:
                l3 = l3 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        else:
            options = [IPOption_Router_Alert()] if self.ip_options else []
            l3 = IP(src="10.77.0.1", dst="10.77.0.2", id=ip_id, flags="DF", ttl=64,
                    options=options)
        if self.udp:
            l4 = UDP(sport=40000, dport=5001)
        else:
            options = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))] \
                if self.tcp_options else []
            l4 = TCP(sport=40000, dport=5001, seq=seq, ack=777, flags=flags, window=502,
                     options=options)
        pkt = l3 / l4 / Raw(payload) if payload else l3 / l4
        if self.l2:
            eth = Ether(src=MAC_A, dst=MAC_B)
            pkt = eth / Dot1Q(vlan=77) / pkt if self.vlan else eth / pkt
        return pkt

    def parse(self, frame: bytes):
        if self.l2:
            return Ether(frame)
        return IPv6(frame) if self.ipv6 else IP(frame)


def l4_offset(parsed, l4_layer) -> int:
    return len(bytes(parsed)) - len(bytes(parsed[l4_layer]))


def make_partial(frame: bytes, shape: Shape) -> tuple[bytes, int]:
    """Replace the L4 checksum by the pseudo-header sum, as the kernel hands it over.

    Returns the frame and its L4 offset.
    """
    parsed = shape.parse(frame)
    start = l4_offset(parsed, shape.l4_layer)
    l4_len = len(frame) - start
    proto = 17 if shape.udp else 6
    if shape.ipv6:
        pseudo = in6_pseudoheader(proto, parsed[IPv6], l4_len)
    else:
        pseudo = in4_pseudoheader(proto, parsed[IP], l4_len)
    folded = ~checksum(bytes(pseudo)) & 0xFFFF
    out = bytearray(frame)
    out[start + shape.csum_field:start + shape.csum_field + 2] = folded.to_bytes(2, "big")
    return bytes(out), start


def superframe(shape: Shape, payload: bytes, mss: int, *, ip_id=0x1234, seq=1000,
               flags=TCP_FLAGS["A"], ecn=False, kernel_hdr_len=0xBEEF):
    """(virtio header, frame) of a GSO superframe; ``hdr_len`` deliberately wrong."""
    frame, start = make_partial(bytes(shape.build(payload, ip_id=ip_id, seq=seq, flags=flags)),
                                shape)
    if shape.udp:
        gso_type = GSO_UDP_L4
    else:
        gso_type = (GSO_TCPV6 if shape.ipv6 else GSO_TCPV4) | (GSO_ECN if ecn else 0)
    header = vnet(NEEDS_CSUM, gso_type, kernel_hdr_len, mss, start, shape.csum_field)
    return header, frame


def expected_segments(shape: Shape, payload: bytes, mss: int, *, ip_id=0x1234, seq=1000,
                      flags=TCP_FLAGS["A"]) -> list[bytes]:
    """What an independent segmenter (scapy, field by field) makes of the superframe."""
    chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)] or [b""]
    out = []
    for k, chunk in enumerate(chunks):
        seg_flags = flags
        if k != len(chunks) - 1:
            seg_flags &= ~(TCP_FLAGS["F"] | TCP_FLAGS["P"])
        if k != 0:
            seg_flags &= ~TCP_FLAGS["C"]
        pkt = shape.build(chunk, ip_id=(ip_id + k) & 0xFFFF, seq=(seq + k * mss) & 0xFFFFFFFF,
                          flags=seg_flags)
        out.append(bytes(pkt))
    return out


def assert_checksums_valid(frame: bytes, shape: Shape) -> None:
    """Let scapy recompute every checksum of ``frame`` and compare with what is there."""
    parsed = shape.parse(frame)
    fresh = parsed.copy()
    for layer in (IP, TCP, UDP):
        if layer in fresh:
            del fresh[layer].chksum
    fresh = shape.parse(bytes(fresh))
    for layer in (IP, TCP, UDP):
        if layer in parsed:
            assert parsed[layer].chksum == fresh[layer].chksum, f"bad {layer.__name__} checksum"


shapes = st.builds(Shape, ipv6=st.booleans(), udp=st.booleans(), l2=st.booleans(),
                   vlan=st.booleans(), ip_options=st.booleans(), tcp_options=st.booleans())
tcp_flag_sets = st.sets(st.sampled_from("FPAEC")).map(
    lambda names: sum(TCP_FLAGS[n] for n in names) | TCP_FLAGS["A"])


# -- segmentation against scapy ----------------------------------------------------------------

@SLOW
@given(shape=shapes, data=st.data(), flags=tcp_flag_sets)
def test_superframe_splits_into_the_segments_scapy_builds(shape, data, flags):
    shape = Shape(**{**shape.__dict__, "vlan": shape.vlan and shape.l2})
    mss = data.draw(st.integers(1, 9000), label="mss")
    size = data.draw(st.integers(0, min(mss * 40, 30000)), label="payload")
    payload = data.draw(st.binary(min_size=size, max_size=size), label="bytes")
    header, frame = superframe(shape, payload, mss, flags=flags, ecn=bool(flags & 0x80))

    segments = gso.segment(header, frame, l2=shape.l2)

    assert segments == expected_segments(shape, payload, mss, flags=flags)
    for seg in segments:
        assert_checksums_valid(seg, shape)


@pytest.mark.parametrize("ipv6", [False, True])
def test_64k_tcp_superframe_gives_45_segments_of_1448_bytes(ipv6):
    shape = Shape(ipv6=ipv6, tcp_options=True)
    payload = os.urandom(65535 - 200)
    header, frame = superframe(shape, payload, 1448)

    segments = gso.segment(header, frame)

    assert len(segments) == -(-len(payload) // 1448)
    assert segments == expected_segments(shape, payload, 1448)
    assert b"".join(shape.parse(s)[Raw].load for s in segments) == payload


def test_ipv4_id_and_tcp_sequence_wrap_around():
    shape = Shape()
    payload = os.urandom(5000)
    header, frame = superframe(shape, payload, 1000, ip_id=0xFFFE, seq=0xFFFFFC00)

    segments = gso.segment(header, frame)

    assert segments == expected_segments(shape, payload, 1000, ip_id=0xFFFE, seq=0xFFFFFC00)
    assert [Ether(s)[IP].id for s in segments] == [0xFFFE, 0xFFFF, 0, 1, 2]


def test_fin_and_psh_only_on_last_segment_cwr_only_on_first():
    shape = Shape()
    flags = sum(TCP_FLAGS[n] for n in "FPAC")
    header, frame = superframe(shape, os.urandom(3000), 1000, flags=flags, ecn=True)

    got = [int(Ether(s)[TCP].flags) for s in gso.segment(header, frame)]

    assert got == [TCP_FLAGS["A"] | TCP_FLAGS["C"], TCP_FLAGS["A"],
                   TCP_FLAGS["A"] | TCP_FLAGS["F"] | TCP_FLAGS["P"]]


def test_ethernet_padding_after_the_ip_packet_is_not_copied_into_segments():
    shape = Shape()
    payload = os.urandom(2500)
    header, frame = superframe(shape, payload, 1000)

    segments = gso.segment(header, frame + b"\xee" * 20)

    assert segments == expected_segments(shape, payload, 1000)


def test_superframe_without_needs_csum_is_still_segmented_with_full_checksums():
    shape = Shape(ipv6=True)
    payload = os.urandom(4000)
    header, frame = superframe(shape, payload, 1400)
    header = bytes([0]) + header[1:]        # no NEEDS_CSUM: the field holds garbage for us

    assert gso.segment(header, frame) == expected_segments(shape, payload, 1400)


def test_kernel_hdr_len_is_ignored_and_recomputed():
    for shape, expected in ((Shape(tcp_options=True), 14 + 20 + 32),
                            (Shape(vlan=True), 18 + 20 + 20),
                            (Shape(ipv6=True, udp=True, l2=False), 40 + 8),
                            (Shape(ipv6=True, ip_options=True), 14 + 40 + 8 + 8 + 20)):
        header, frame = superframe(shape, b"x" * 3000, 1000, kernel_hdr_len=3)
        assert gso.validate(header, frame, l2=shape.l2) == (None, expected)


@SLOW
@given(shape=shapes, mss=st.integers(1, 2000), size=st.integers(0, 6000),
       edits=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=4),
       header_edits=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 255)), max_size=2),
       cut=st.integers(0, 200))
def test_corrupted_packets_are_refused_or_split_without_losing_a_byte(
        shape, mss, size, edits, header_edits, cut):
    header, frame = superframe(shape, os.urandom(size), mss)
    frame, header = bytearray(frame), bytearray(header)
    for offset, value in edits:
        if offset < len(frame):
            frame[offset] = value
    for offset, value in header_edits:
        header[offset] = value
    frame = bytes(frame[:len(frame) - cut] if cut < 100 else frame)

    reason, hdr_len = gso.validate(bytes(header), frame, l2=shape.l2)

    assert hdr_len <= len(frame)
    event(f"refused: {reason}" if reason else f"accepted, gso_type {header[1]}")
    if reason is not None:
        with pytest.raises(ValueError):
            gso.segment(bytes(header), frame, l2=shape.l2)
        return
    segments = gso.segment(bytes(header), frame, l2=shape.l2)
    gso_size = struct.unpack("=BBHHHH", header)[3]
    if header[1] == GSO_NONE:
        assert len(segments) == 1 and len(segments[0]) == len(frame)
        return
    loads = [seg[hdr_len:] for seg in segments]
    assert all(len(load) == gso_size for load in loads[:-1]) and len(loads[-1]) <= gso_size
    joined = b"".join(loads)
    assert joined == frame[hdr_len:hdr_len + len(joined)]


# -- partial output (egress with checksum offload but no segmentation) ---------------------------

@SLOW
@given(shape=shapes, size=st.integers(0, 12000), mss=st.integers(500, 3000))
def test_partial_csum_segments_complete_to_the_full_segments(shape, size, mss):
    shape = Shape(**{**shape.__dict__, "vlan": shape.vlan and shape.l2})
    payload = os.urandom(size)
    header, frame = superframe(shape, payload, mss)

    pairs = gso.segment(header, frame, l2=shape.l2, partial_csum=True, with_headers=True)

    expected = expected_segments(shape, payload, mss)
    assert len(pairs) == len(expected)
    start = struct.unpack("=BBHHHH", header)[4]
    for (seg_header, seg), want in zip(pairs, expected, strict=True):
        flags, gso_type, _, _, csum_start, csum_offset = struct.unpack("=BBHHHH", seg_header)
        assert (flags, gso_type, csum_start, csum_offset) == (
            NEEDS_CSUM, GSO_NONE, start, shape.csum_field)
        # the field holds exactly the pseudo-header sum the kernel would have put there
        assert seg == make_partial(want, shape)[0]
        assert gso.complete_checksum(seg_header, seg, l2=shape.l2) == want


# -- checksum completion of ordinary packets ---------------------------------------------------

@SLOW
@given(shape=shapes, payload=st.binary(max_size=3000))
def test_complete_checksum_gives_the_checksum_scapy_computes(shape, payload):
    shape = Shape(**{**shape.__dict__, "vlan": shape.vlan and shape.l2})
    full = bytes(shape.build(payload, flags=TCP_FLAGS["P"] | TCP_FLAGS["A"]))
    partial, start = make_partial(full, shape)
    header = vnet(NEEDS_CSUM, GSO_NONE, 0, 0, start, shape.csum_field)

    assert gso.complete_checksum(header, partial, l2=shape.l2) == full
    assert gso.segment(header, partial, l2=shape.l2) == [full]


def test_udp_checksum_that_computes_to_zero_is_sent_as_ffff():
    shape = Shape(udp=True)
    payload = bytearray(b"\0" * 64)
    probe = shape.build(bytes(payload))
    # Two payload bytes chosen so that the one's complement sum is 0xffff: checksum 0.
    current = Ether(bytes(probe))[UDP].chksum
    payload[0:2] = current.to_bytes(2, "big")
    full = bytes(shape.build(bytes(payload)))
    assert Ether(full)[UDP].chksum == 0xFFFF      # scapy agrees the checksum computes to zero
    partial, start = make_partial(full, shape)

    header = vnet(NEEDS_CSUM, GSO_NONE, 0, 0, start, 6)
    assert gso.complete_checksum(header, partial) == full
    gso_header = vnet(NEEDS_CSUM, GSO_UDP_L4, 0, 100, start, 6)
    assert gso.segment(gso_header, partial)[0] == full


def test_packet_without_needs_csum_is_returned_unchanged():
    frame = bytes(Shape().build(b"hello"))
    broken = frame[:-7] + b"\x12\x34" + frame[-5:]
    assert gso.complete_checksum(vnet(), broken) == broken
    assert gso.segment(vnet(), broken) == [broken]


def test_inner_checksum_of_a_tunnel_packet_is_completed():
    inner = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.77.1.1", dst="10.77.1.2") / \
        TCP(sport=1, dport=2, flags="PA") / Raw(os.urandom(333))
    outer = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.77.0.1", dst="10.77.0.2") / \
        UDP(sport=4789, dport=4789, chksum=0) / VXLAN(vni=7) / inner
    full = bytes(outer)
    parsed = Ether(full)
    inner_tcp = len(full) - len(bytes(parsed[VXLAN][TCP]))
    pseudo = in4_pseudoheader(6, parsed[VXLAN][IP], len(full) - inner_tcp)
    partial = bytearray(full)
    partial[inner_tcp + 16:inner_tcp + 18] = (~checksum(bytes(pseudo)) & 0xFFFF).to_bytes(2, "big")
    header = vnet(NEEDS_CSUM, GSO_NONE, 0, 0, inner_tcp, 16)

    assert gso.validate(header, bytes(partial)) == (None, 14 + 20 + 8)
    assert gso.complete_checksum(header, bytes(partial)) == full


def test_complete_checksum_refuses_a_superframe():
    header, frame = superframe(Shape(), b"x" * 3000, 1000)
    with pytest.raises(MalformedPacketError, match="segment") as info:
        gso.complete_checksum(header, frame)
    assert info.value.reason == "bad_gso_type"


# -- validation: every reason -------------------------------------------------------------------

def _good():
    return superframe(Shape(), b"y" * 3000, 1000)


def _patched(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


def _malformed():
    header, frame = _good()
    flags, gso_type, hdr_len, mss, start, offset = struct.unpack("=BBHHHH", header)
    _, ip6_frame = superframe(Shape(ipv6=True), b"y" * 3000, 1000)
    _, udp_frame = superframe(Shape(udp=True), b"y" * 3000, 1000)
    frag = bytes(Ether(src=MAC_A, dst=MAC_B) / IPv6(src="fd77::1", dst="fd77::2") /
                 IPv6ExtHdrFragment() / TCP() / Raw(b"z" * 3000))
    routed = bytes(Ether(src=MAC_A, dst=MAC_B) / IPv6(src="fd77::1", dst="fd77::2") /
                   IPv6ExtHdrRouting(addresses=["fd77::3"], segleft=1) / TCP() / Raw(b"z" * 3000))
    arp = bytes(Ether(src=MAC_A, dst=MAC_B) / ARP())
    return [
        ("too_short", header, frame[:30]),
        ("too_short", header, frame[:-1]),                       # IP length beyond the frame
        ("too_short", header, frame[:10]),
        ("bad_flags", vnet(4, gso_type, hdr_len, mss, start, offset), frame),
        ("bad_gso_type", vnet(flags, GSO_UFO, hdr_len, mss, start, offset), frame),
        ("bad_gso_type", vnet(flags, 2, hdr_len, mss, start, offset), frame),
        ("bad_gso_type", vnet(flags, GSO_NONE | GSO_ECN, 0, 0, start, offset), frame),
        ("bad_gso_type", vnet(flags, GSO_UDP_L4 | GSO_ECN, 0, 1000, start, 6), udp_frame),
        ("gso_size_zero", vnet(flags, gso_type, hdr_len, 0, start, offset), frame),
        ("gso_size_too_large", vnet(flags, gso_type, hdr_len, 65535 - 39, start, offset), frame),
        ("csum_outside_frame", vnet(flags, gso_type, hdr_len, mss, start, 60000), frame),
        ("csum_outside_frame", vnet(flags, GSO_NONE, 0, 0, len(frame) - 1, 0), frame),
        ("csum_not_at_l4", vnet(flags, gso_type, hdr_len, mss, 14, offset), frame),
        ("csum_not_at_l4", vnet(flags, gso_type, hdr_len, mss, start + 2, offset - 2), frame),
        ("bad_csum_offset", vnet(flags, gso_type, hdr_len, mss, start, 6), frame),
        ("bad_ip_header", header, _patched(frame, 14, b"\x55")),  # version 5
        ("bad_ip_header", header, _patched(frame, 14, b"\x44")),  # IHL 16 bytes
        ("bad_ip_length", header, _patched(frame, 16, b"\x00\x10")),
        ("bad_l4_header", header, _patched(frame, start + 12, b"\x40")),  # data offset 4
        ("bad_l4_header", vnet(), _patched(udp_frame, 14 + 20 + 4, b"\x00\x04")),  # UDP len 4
        ("unsupported_protocol", vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16), arp + b"\0" * 40),
        ("unsupported_protocol", header, _patched(frame, 14 + 6, b"\x20\x00")),  # MF fragment
        ("unsupported_protocol", vnet(0, GSO_TCPV6, 0, 1000, 0, 0), frag),
        ("unsupported_protocol", vnet(0, GSO_TCPV6, 0, 1000, 0, 0), routed),
        ("protocol_mismatch", vnet(flags, GSO_TCPV6, hdr_len, mss, start, offset), frame),
        ("protocol_mismatch", vnet(flags, GSO_TCPV4, 0, 1000, 54, 16), ip6_frame),
        ("protocol_mismatch", vnet(flags, GSO_UDP_L4, hdr_len, mss, start, offset), frame),
        ("protocol_mismatch", vnet(flags, GSO_TCPV4, 0, 1000, 34, 16), udp_frame),
        ("bad_gso_type", vnet(0, 0x7F, 0, 0, 0, 0), ip6_frame),
    ]


@pytest.mark.parametrize(("reason", "header", "frame"), _malformed(),
                         ids=[f"{i}-{case[0]}" for i, case in enumerate(_malformed())])
def test_malformed_packet_is_refused_with_its_reason(reason, header, frame):
    assert gso.validate(header, frame)[0] == reason
    with pytest.raises(MalformedPacketError) as info:
        gso.segment(header, frame)
    assert info.value.reason == reason


def test_every_reason_has_a_test_and_a_name():
    # length_over_slot: refused at the Python boundary (test_segment_batch_refuses_a_length_
    # past_the_slot); the C loop's own guard is reached by C callers only
    tested = {case[0] for case in _malformed()} | {"ok", "no_room", "slot_too_small",
                                                    "length_over_slot"}
    assert tested == set(gso.REASONS)
    for member in gso.GsoReason:
        if member.name != "GSO_REASON_COUNT":
            assert gso.REASONS[member] == member.name.removeprefix("GSO_").lower()
            assert gso.reason_name(member) == gso.REASONS[member]


def test_plain_frames_of_other_protocols_pass_untouched():
    arp = bytes(Ether(src=MAC_A, dst=MAC_B) / ARP())
    assert gso.validate(vnet(), arp) == (None, 14)
    assert gso.segment(vnet(), arp) == [arp]
    assert gso.validate(vnet(), b"", l2=False) == (None, 0)


# -- ring to ring --------------------------------------------------------------------------------

def test_segment_batch_writes_what_segment_writes_and_counts_drops_by_reason():
    src = PacketRing(8, 65536 + 128)
    dst = PacketRing(256, 2048)
    good_header, good_frame = superframe(Shape(), os.urandom(10000), 1448)
    v6_header, v6_frame = superframe(Shape(ipv6=True, udp=True), os.urandom(3000), 1200)
    plain = bytes(Shape().build(b"plain"))
    src.push(good_frame, good_header)
    src.push(good_frame, vnet(NEEDS_CSUM, GSO_TCPV4, 0, 0, 34, 16))      # gso_size 0
    src.push(v6_frame, v6_header)
    src.push(plain, vnet())
    src.push(good_frame[:20], good_header)                                # truncated

    stats = gso.segment_batch(src, src.head, 5, dst)

    expected = (gso.segment(good_header, good_frame) + gso.segment(v6_header, v6_frame) +
                [plain])
    assert [dst.packet(i) for i in range(dst.head, dst.tail)] == expected
    assert all(dst.header(i) == bytes(10) for i in range(dst.head, dst.tail))
    assert stats == {"consumed": 5, "packets": 3, "superframes": 2, "segments": len(expected),
                     "bytes": sum(map(len, expected)),
                     "drops": {"gso_size_zero": 1, "too_short": 1}}
    assert src.head == 0


def test_segment_batch_stops_when_the_destination_is_full_and_resumes():
    src = PacketRing(4, 65536 + 128)
    dst = PacketRing(8, 2048)
    header, frame = superframe(Shape(), os.urandom(5000), 1000)      # 5 segments each
    src.push(frame, header)
    src.push(frame, header)

    first = gso.segment_batch(src, 0, 2, dst)
    assert (first["consumed"], first["segments"], dst.pending) == (1, 5, 5)
    dst.consume(5)
    second = gso.segment_batch(src, 1, 1, dst)
    assert (second["consumed"], second["segments"], dst.pending) == (1, 5, 5)


def test_segment_batch_drops_what_can_never_fit_the_destination():
    src = PacketRing(4, 65536 + 128)
    header, frame = superframe(Shape(), os.urandom(5000), 1000)
    src.push(frame, header)

    too_few = gso.segment_batch(src, 0, 1, PacketRing(4, 2048))
    too_small = gso.segment_batch(src, 0, 1, PacketRing(8, 512))

    assert (too_few["consumed"], too_few["drops"]) == (1, {"no_room": 1})
    assert (too_small["consumed"], too_small["drops"]) == (1, {"slot_too_small": 1})


def test_segment_batch_refuses_slots_that_hold_no_packet():
    src = PacketRing(4, 2048)
    src.push(bytes(Shape().build(b"x")))
    with pytest.raises(ValueError, match="held"):
        gso.segment_batch(src, 0, 2, PacketRing(4, 2048))
    with pytest.raises(ValueError, match="held"):
        gso.segment_batch(src, 5, 0, PacketRing(4, 2048))


def test_segment_batch_partial_mode_sets_needs_csum_headers():
    src = PacketRing(2, 65536 + 128)
    dst = PacketRing(8, 2048)
    header, frame = superframe(Shape(vlan=True), os.urandom(3000), 1000)
    src.push(frame, header)

    gso.segment_batch(src, 0, 1, dst, partial_csum=True)

    for i in range(dst.head, dst.tail):
        flags, gso_type, hdr_len, gso_size, start, offset = struct.unpack(
            "=BBHHHH", dst.header(i))
        assert (flags, gso_type, hdr_len, gso_size, start, offset) == (
            NEEDS_CSUM, GSO_NONE, 18 + 20 + 20, 0, 18 + 20, 16)


# -- the kernel's TCP stack as the source of real superframes ----------------------------------

PEER_MAC = "02:77:00:00:00:99"


def _tcp_frames_from(queue, ring):
    """Read what the tap has now: (virtio header, frame) pairs."""
    got = queue.recv_batch(ring, 64)
    pairs = [(ring.header(i), ring.packet(i)) for i in range(ring.head, ring.tail)]
    ring.consume(got)
    ring.clear()
    return pairs


def test_kernel_tcp_superframes_segment_into_the_stream_that_was_sent(make_netns, prefix):
    from tapengine.devices import add_neighbor, get_link
    from tapengine.netns import inside_netns
    from tapengine.tun import Offload, open_queue

    ns = make_netns("g")
    name = prefix + "g"
    data = os.urandom(1 << 20)
    queue = open_queue(name, "tap", vnet_hdr=True)
    sock = None
    try:
        enabled = queue.negotiate_offload(Offload.CSUM | Offload.TSO4 | Offload.TSO6)
        assert enabled & Offload.TSO4
        link = get_link(name)
        link.move_to(ns)
        link.add_address("10.77.0.1/24")
        link.up()
        add_neighbor(name, "10.77.0.2", PEER_MAC, netns=ns)
        with inside_netns(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.setblocking(False)
        assert sock.connect_ex(("10.77.0.2", 5001)) in (0, 115)      # EINPROGRESS

        ring = PacketRing(64, 65536 + 128)
        received = bytearray()
        superframes = segments = 0
        client_isn = tap_mac = None
        fin_seen = False
        sender = None
        deadline = time.monotonic() + 30

        def reply(flags, seq, ack, options=()):
            pkt = (Ether(src=PEER_MAC, dst=tap_mac) / IP(src="10.77.0.2", dst="10.77.0.1") /
                   TCP(sport=5001, dport=cport, flags=flags, seq=seq, ack=ack, window=65535,
                       options=list(options)))
            os.write(queue.fileno(), bytes(10) + bytes(pkt))

        while not (fin_seen and len(received) == len(data)):
            assert time.monotonic() < deadline, f"stalled after {len(received)} bytes"
            select.select([queue.fileno()], [], [], 0.5)
            for header, frame in _tcp_frames_from(queue, ring):
                pkt = Ether(frame)
                if TCP not in pkt or IP not in pkt or pkt[IP].src != "10.77.0.1":
                    continue
                tcp = pkt[TCP]
                if tcp.flags.S:
                    client_isn, cport, tap_mac = tcp.seq, tcp.sport, pkt.src
                    reply("SA", 5000, client_isn + 1, [("MSS", 1460), ("WScale", 7)])
                    continue
                assert gso.validate(header, frame)[0] is None
                superframes += header[1] != GSO_NONE
                for seg in gso.segment(header, frame):
                    segments += 1
                    assert len(seg) <= 1514
                    assert_checksums_valid(seg, Shape())
                    seg_tcp = Ether(seg)[TCP]
                    load = bytes(seg_tcp.payload)
                    rel = (seg_tcp.seq - client_isn - 1) & 0xFFFFFFFF
                    assert rel <= len(received), "a hole in the sequence space"
                    assert received[rel:rel + len(load)] == load[:len(received) - rel]
                    received += load[len(received) - rel:]
                    fin_seen |= bool(seg_tcp.flags.F)
                reply("A", 5001, client_isn + 1 + len(received) + fin_seen)
            if sender is None and client_isn is not None:
                select.select([], [sock], [], 5)
                sock.setblocking(True)
                sock.settimeout(30)

                def send_all():
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send_all, daemon=True)
                sender.start()
        sender.join(10)
        assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
        print(f"{superframes} superframes -> {segments} segments, {len(received)} bytes")
        assert superframes > 0 and segments > superframes
    finally:
        if sock is not None:
            sock.close()
        queue.close()


def test_segment_batch_refuses_a_length_past_the_slot():
    src = PacketRing(4, 2048)
    dst = PacketRing(64, 2048)
    plain = bytes(Shape().build(b"x" * 100))
    src.push(plain, vnet())
    src.lengths[0] = 60014   # would read 42 segments from past the 8 KiB slab
    with pytest.raises(ValueError, match="slot 0 holds a length of 60014 bytes"):
        gso.segment_batch(src, 0, 1, dst)
    assert dst.pending == 0 and dst.tail == 0


def test_segment_batch_takes_indices_past_2_to_the_32():
    src = PacketRing(4, 65536 + 128)
    dst = PacketRing(16, 2048)
    header, frame = superframe(Shape(), os.urandom(3000), 1000)
    src.head = src.tail = dst.head = dst.tail = (1 << 32) - 1
    src.push(frame, header)
    src.push(frame, header)   # in slot 2**32, i.e. 0
    stats = gso.segment_batch(src, src.head + 1, 1, dst)   # first = 2**32 from Python
    assert (stats["consumed"], stats["segments"]) == (1, 3)
    assert [dst.packet(dst.head + k) for k in range(3)] == gso.segment(header, frame)
    src.consume(2)
    assert src.head == src.tail == 1
