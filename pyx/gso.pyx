# cython: language_level=3, embedsignature=True
"""Software segmentation and checksums for virtio-net GSO superframes.

A tap or tun fd with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` hands over TCP (and UDP) superframes of
up to 64 KiB, each behind a 10-byte ``virtio_net_hdr``, with the L4 checksum left *partial*: the
kernel stored the folded pseudo-header sum in the checksum field (``__tcp_v4_send_check``:
``th->check = ~tcp_v4_check(len, saddr, daddr, 0)``) and says where the checksum starts
(``csum_start``, counted from the first byte of the frame as delivered, so including the Ethernet
header and any VLAN tag on a tap) and where to store it (``csum_offset`` after that).

This module checks such headers (never trusting ``hdr_len``), splits superframes into frames of at
most ``gso_size`` payload bytes with every header field and checksum recomputed, and completes
partial checksums of ordinary packets. The C-level API is in ``gso.pxd``; the functions below are
thin wrappers for tests, pcap and consumers.

Output headers are all zero (flags 0, gso_type NONE): a plain frame whose checksums are complete,
exactly what the kernel hands over for such a frame. DATA_VALID is deliberately not set: it would
let the receiving stack skip verification, and we want a mistake here to show up in the kernel's
checksum error counters, not as corrupt data. With
``partial_csum=True`` (``GSO_OUT_PARTIAL_CSUM``) the L4 checksum is left partial and the header
says NEEDS_CSUM, for an egress that does checksums but not segmentation.
"""

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from tapengine.netorder cimport (
    load_be16, load_be32, load_host16, store_be16, store_be32, store_host16,
)
from tapengine._ring cimport (
    PacketRing, ring_check_lengths, ring_frame, ring_free, ring_fresh, ring_hdr, ring_index,
    ring_len, ring_slot_ok,
)
from tapengine.includes.consts cimport (
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, VLAN_HLEN, VNET_HDR_LEN,
)
from tapengine.includes.system cimport htons

from tapengine.errors import MalformedPacketError

cdef enum:
    MAX_IPV6_EXT = 8            # extension headers walked before giving up
    TCP_FIN = 0x01
    TCP_PSH = 0x08
    TCP_CWR = 0x80
    IP_MAX = 65535

#: ``REASONS[code]``: the name of each ``GsoReason`` as used in drop counters.
REASONS = (
    "ok", "too_short", "bad_flags", "bad_gso_type", "gso_size_zero", "gso_size_too_large",
    "csum_outside_frame", "csum_not_at_l4", "bad_csum_offset", "bad_ip_header", "bad_ip_length",
    "bad_l4_header", "unsupported_protocol", "protocol_mismatch", "no_room", "slot_too_small",
    "length_over_slot",
)
assert len(REASONS) == GSO_REASON_COUNT

#: virtio-net header constants, for Python callers building headers.
NEEDS_CSUM = VNET_F_NEEDS_CSUM
DATA_VALID = VNET_F_DATA_VALID
GSO_NONE = VNET_GSO_NONE
GSO_TCPV4 = VNET_GSO_TCPV4
GSO_TCPV6 = VNET_GSO_TCPV6
GSO_UDP_L4 = VNET_GSO_UDP_L4
GSO_ECN = VNET_GSO_ECN


# -- byte access: packets are unaligned and in network order; virtio headers in host order ----

cdef inline void _put_csum(uint8_t *p, uint16_t native_sum) noexcept nogil:
    # A folded native-order sum stored as it is lands in network order (RFC 1071 2(B)).
    memcpy(p, &native_sum, 2)


# -- checksums --------------------------------------------------------------------------------

cdef uint64_t csum_add(const uint8_t *p, size_t n, uint64_t acc) noexcept nogil:
    # Returns acc + the native-order word sum of n bytes; 64 KiB cannot overflow the accumulator.
    cdef uint64_t q0, q1
    cdef uint32_t w
    cdef uint16_t h
    while n >= 16:
        memcpy(&q0, p, 8)
        memcpy(&q1, p + 8, 8)
        acc += (q0 & 0xffffffffU) + (q0 >> 32) + (q1 & 0xffffffffU) + (q1 >> 32)
        p += 16
        n -= 16
    while n >= 4:
        memcpy(&w, p, 4)
        acc += w
        p += 4
        n -= 4
    if n >= 2:
        memcpy(&h, p, 2)
        acc += h
        p += 2
        n -= 2
    if n:
        h = 0
        memcpy(&h, p, 1)        # the odd byte is the high byte of a zero-padded word
        acc += h
    return acc


cdef inline uint64_t _pseudo_sum(const uint8_t *l3, uint8_t ip_version, uint8_t proto,
                                 uint32_t l4_len) noexcept nogil:
    # Returns the native-order sum of the IPv4/IPv6 pseudo-header of an L4 segment.
    cdef uint64_t acc
    if ip_version == 4:
        acc = csum_add(l3 + 12, 8, 0)               # source and destination address
    else:
        acc = csum_add(l3 + 8, 32, 0)
        acc += htons(<uint16_t>(l4_len >> 16))
    return acc + htons(<uint16_t>(l4_len & 0xffff)) + htons(proto)


cdef inline void _ipv4_header_csum(uint8_t *l3) noexcept nogil:
    cdef uint32_t ihl = (l3[0] & 0x0f) * 4
    l3[10] = 0
    l3[11] = 0
    _put_csum(l3 + 10, ~csum_fold(csum_add(l3, ihl, 0)))


# -- validation -------------------------------------------------------------------------------

cdef int _parse_ipv6_ext(const uint8_t *frame, gso_info *info, bint strict) noexcept nogil:
    # Walks hop-by-hop, routing and destination options headers from info.l4_off; leaves
    # l4_off/l4_proto at the upper-layer header. Returns 0 or a GsoReason (> 0).
    cdef uint8_t nh = info.l4_proto
    cdef uint32_t p = info.l4_off
    cdef int walked = 0
    while nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or nh == IPPROTO_DSTOPTS:
        if walked == MAX_IPV6_EXT:
            return GSO_UNSUPPORTED_PROTOCOL
        if p + 8 > info.end:
            return GSO_TOO_SHORT
        if nh == IPPROTO_ROUTING and frame[p + 3] != 0 and strict:
            # segments left: the pseudo-header would need the final destination
            return GSO_UNSUPPORTED_PROTOCOL
        nh = frame[p]
        p += (<uint32_t>frame[p + 1] + 1) * 8
        walked += 1
    if p > info.end:
        return GSO_TOO_SHORT
    if strict and nh == IPPROTO_FRAGMENT:
        return GSO_UNSUPPORTED_PROTOCOL
    info.l4_off = <uint16_t>p
    info.l4_proto = nh
    return GSO_OK


cdef int gso_validate(const uint8_t *hdr, const uint8_t *frame, uint32_t length, bint l2,
                      gso_info *info) noexcept nogil:
    # Returns 0 (GSO_OK) or a GsoReason > 0; *info is filled as far as parsing got.
    cdef uint8_t gso_type = hdr[1]
    cdef uint8_t base_type = gso_type & ~VNET_GSO_ECN
    cdef uint32_t off = 0, ihl, tot, doff, ulen
    cdef uint16_t ethertype = 0
    cdef uint8_t version
    cdef int reason
    cdef bint gso, needs_csum, strict

    memset(info, 0, sizeof(gso_info))
    info.flags = hdr[0]
    info.gso_type = base_type
    info.gso_size = load_host16(hdr + 4)
    info.csum_start = load_host16(hdr + 6)
    info.csum_offset = load_host16(hdr + 8)
    info.end = length

    if info.flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID):
        return GSO_BAD_FLAGS
    if base_type != VNET_GSO_NONE and base_type != VNET_GSO_TCPV4 \
            and base_type != VNET_GSO_TCPV6 and base_type != VNET_GSO_UDP_L4:
        return GSO_BAD_GSO_TYPE
    if gso_type & VNET_GSO_ECN and base_type != VNET_GSO_TCPV4 and base_type != VNET_GSO_TCPV6:
        return GSO_BAD_GSO_TYPE
    gso = base_type != VNET_GSO_NONE
    needs_csum = info.flags & VNET_F_NEEDS_CSUM
    strict = gso or needs_csum          # only then must we understand L3 and L4
    if gso and info.gso_size == 0:
        return GSO_GSO_SIZE_ZERO

    # L2
    if l2:
        if length < ETH_HLEN:
            return GSO_TOO_SHORT
        ethertype = load_be16(frame + 12)
        off = ETH_HLEN
        if ethertype == ETH_P_8021Q or ethertype == ETH_P_8021AD:
            if length < ETH_HLEN + VLAN_HLEN:
                return GSO_TOO_SHORT
            ethertype = load_be16(frame + 16)
            off = ETH_HLEN + VLAN_HLEN
    elif length:
        version = frame[0] >> 4
        ethertype = ETH_P_IP if version == 4 else ETH_P_IPV6 if version == 6 else 0
    info.l3_off = <uint16_t>off
    info.l4_off = <uint16_t>off
    info.hdr_len = <uint16_t>off
    if ethertype != ETH_P_IP and ethertype != ETH_P_IPV6:
        return GSO_UNSUPPORTED_PROTOCOL if strict else GSO_OK

    # L3
    if ethertype == ETH_P_IP:
        if length < off + 20:
            return GSO_TOO_SHORT
        ihl = (frame[off] & 0x0f) * 4
        if frame[off] >> 4 != 4 or ihl < 20:
            return GSO_BAD_IP_HEADER
        if length < off + ihl:
            return GSO_TOO_SHORT
        tot = load_be16(frame + off + 2)
        if tot < ihl:
            return GSO_BAD_IP_LENGTH
        if off + tot > length:
            return GSO_TOO_SHORT
        info.ip_version = 4
        info.end = off + tot
        info.l4_off = <uint16_t>(off + ihl)
        info.l4_proto = frame[off + 9]
        if load_be16(frame + off + 6) & 0x3fff:         # MF or a fragment offset
            if strict:
                return GSO_UNSUPPORTED_PROTOCOL
            info.hdr_len = info.l4_off
            return GSO_OK
    else:
        if length < off + 40:
            return GSO_TOO_SHORT
        if frame[off] >> 4 != 6:
            return GSO_BAD_IP_HEADER
        tot = 40 + <uint32_t>load_be16(frame + off + 4)
        if off + tot > length:
            return GSO_TOO_SHORT
        info.ip_version = 6
        info.end = off + tot
        info.l4_off = <uint16_t>(off + 40)
        info.l4_proto = frame[off + 6]
        reason = _parse_ipv6_ext(frame, info, strict)
        if reason:
            return reason

    # L4
    info.hdr_len = info.l4_off
    if info.l4_proto == IPPROTO_TCP:
        if <uint32_t>info.l4_off + 20 > info.end:
            return GSO_TOO_SHORT
        doff = (frame[info.l4_off + 12] >> 4) * 4
        if doff < 20:
            return GSO_BAD_L4_HEADER
        if <uint32_t>info.l4_off + doff > info.end:
            return GSO_TOO_SHORT
        info.hdr_len = <uint16_t>(info.l4_off + doff)
        info.csum_field = 16
    elif info.l4_proto == IPPROTO_UDP:
        if <uint32_t>info.l4_off + 8 > info.end:
            return GSO_TOO_SHORT
        ulen = load_be16(frame + info.l4_off + 4)
        # A UDP GSO superframe may carry a stale length; segmentation rewrites it.
        if not gso and (ulen < 8 or info.l4_off + ulen > info.end):
            return GSO_BAD_L4_HEADER
        info.hdr_len = <uint16_t>(info.l4_off + 8)
        info.csum_field = 6

    if gso:
        if base_type == VNET_GSO_TCPV4:
            if info.ip_version != 4 or info.l4_proto != IPPROTO_TCP:
                return GSO_PROTOCOL_MISMATCH
        elif base_type == VNET_GSO_TCPV6:
            if info.ip_version != 6 or info.l4_proto != IPPROTO_TCP:
                return GSO_PROTOCOL_MISMATCH
        elif info.l4_proto != IPPROTO_UDP:
            return GSO_PROTOCOL_MISMATCH
        if <uint32_t>(info.hdr_len - info.l3_off) + info.gso_size > IP_MAX:
            return GSO_GSO_SIZE_TOO_LARGE

    if needs_csum:
        if <uint32_t>info.csum_start + info.csum_offset + 2 > info.end:
            return GSO_CSUM_OUTSIDE_FRAME
        if info.csum_start < info.l4_off:
            return GSO_CSUM_NOT_AT_L4
        if gso or (info.csum_start == info.l4_off and info.csum_field):
            # Otherwise csum_start may point deeper: an inner checksum of a tunnel packet.
            if info.csum_start != info.l4_off:
                return GSO_CSUM_NOT_AT_L4
            if info.csum_offset != info.csum_field:
                return GSO_BAD_CSUM_OFFSET
    return GSO_OK


# -- checksum completion ------------------------------------------------------------------------

cdef inline void _complete(uint8_t *frame, uint32_t start, uint32_t offset, uint32_t end,
                           bint udp) noexcept nogil:
    # The field holds the pseudo-header sum: summing over it includes it.
    cdef uint16_t c = ~csum_fold(csum_add(frame + start, end - start, 0))
    if udp and c == 0:
        c = 0xffff          # UDP sends a computed zero as all ones (0 means "no checksum")
    _put_csum(frame + start + offset, c)


# -- segmentation -------------------------------------------------------------------------------

cdef int _copy_plain(const uint8_t *frame, uint32_t length, const gso_info *info,
                     PacketRing out, int mode) noexcept nogil:
    # One non-GSO packet into out's tail slot. Returns 1 or -GsoReason.
    if ring_free(out) == 0:
        return -GSO_NO_ROOM
    if length > out.slot_size:
        return -GSO_SLOT_TOO_SMALL
    cdef uint32_t index = out.tail
    cdef uint8_t *dst = ring_fresh(out, index)
    cdef uint8_t *h = ring_hdr(out, index)
    if length:
        memcpy(dst, frame, length)   # an empty frame may come with frame == NULL
    memset(h, 0, VNET_HDR_LEN)
    if info.flags & VNET_F_NEEDS_CSUM:
        if mode == GSO_OUT_PARTIAL_CSUM:
            h[0] = VNET_F_NEEDS_CSUM
            store_host16(h + 2, info.hdr_len)
            store_host16(h + 6, info.csum_start)
            store_host16(h + 8, info.csum_offset)
        else:
            # Only to the end of the IP packet: Ethernet padding is not part of the segment.
            _complete(dst, info.csum_start, info.csum_offset, info.end,
                      info.csum_start == info.l4_off and info.l4_proto == IPPROTO_UDP)
    ring_len(out, index)[0] = length
    out.tail = index + 1
    return 1


@cython.cdivision(True)
cdef int gso_segment_parsed(const uint8_t *frame, uint32_t length, const gso_info *info,
                            PacketRing out, int mode) noexcept nogil:
    # Returns segments written (>= 1) at out.tail, tail advanced; or -GsoReason, nothing written.
    if info.gso_type == VNET_GSO_NONE:
        return _copy_plain(frame, length, info, out, mode)

    cdef uint32_t hl = info.hdr_len, l3 = info.l3_off, l4 = info.l4_off
    cdef uint32_t mss = info.gso_size
    cdef uint32_t payload = info.end - hl
    cdef uint32_t nseg = (payload + mss - 1) // mss if payload else 1
    cdef bint tcp = info.l4_proto == IPPROTO_TCP
    cdef bint v4 = info.ip_version == 4
    cdef uint32_t first_len = mss if payload > mss else payload
    if nseg > ring_free(out):
        return -GSO_NO_ROOM
    if hl + first_len > out.slot_size:
        return -GSO_SLOT_TOO_SMALL

    cdef uint16_t ip_id = load_be16(frame + l3 + 4) if v4 else 0
    cdef uint32_t seq = load_be32(frame + l4 + 4) if tcp else 0
    cdef uint8_t tcp_flags = frame[l4 + 13] if tcp else 0
    cdef uint32_t k, n, l4_len, pos = hl, index
    cdef uint8_t *dst
    cdef uint8_t *h
    cdef uint64_t acc
    cdef uint16_t c
    for k in range(nseg):
        n = info.end - pos
        if n > mss:
            n = mss
        index = out.tail + k
        dst = ring_fresh(out, index)
        memcpy(dst, frame, hl)
        memcpy(dst + hl, frame + pos, n)
        l4_len = hl - l4 + n
        if v4:
            store_be16(dst + l3 + 2, <uint16_t>(l4 - l3 + l4_len))
            store_be16(dst + l3 + 4, <uint16_t>(ip_id + k))
            _ipv4_header_csum(dst + l3)
        else:
            store_be16(dst + l3 + 4, <uint16_t>(l4 - l3 - 40 + l4_len))
        if tcp:
            store_be32(dst + l4 + 4, seq + (pos - hl))
            dst[l4 + 13] = tcp_flags
            if k != nseg - 1:
                dst[l4 + 13] &= ~(TCP_FIN | TCP_PSH)
            if k != 0:
                dst[l4 + 13] &= ~TCP_CWR
        else:
            store_be16(dst + l4 + 4, <uint16_t>l4_len)
        acc = _pseudo_sum(dst + l3, info.ip_version, info.l4_proto, l4_len)
        h = ring_hdr(out, index)
        memset(h, 0, VNET_HDR_LEN)
        if mode == GSO_OUT_PARTIAL_CSUM:
            _put_csum(dst + l4 + info.csum_field, csum_fold(acc))
            h[0] = VNET_F_NEEDS_CSUM
            store_host16(h + 2, <uint16_t>hl)
            store_host16(h + 6, <uint16_t>l4)
            store_host16(h + 8, info.csum_field)
        else:
            dst[l4 + info.csum_field] = 0
            dst[l4 + info.csum_field + 1] = 0
            c = ~csum_fold(csum_add(dst + l4, l4_len, acc))
            if c == 0 and not tcp:
                c = 0xffff
            _put_csum(dst + l4 + info.csum_field, c)
        ring_len(out, index)[0] = hl + n
        pos += n
    out.tail += nseg
    return <int>nseg


cdef int gso_segment(const uint8_t *hdr, const uint8_t *frame, uint32_t length, bint l2,
                     PacketRing out, int mode) noexcept nogil:
    # Returns segments written (>= 1) at out.tail, tail advanced; or -GsoReason, nothing written.
    cdef gso_info info
    cdef int reason = gso_validate(hdr, frame, length, l2, &info)
    if reason:
        return -reason
    return gso_segment_parsed(frame, length, &info, out, mode)


@cython.cdivision(True)
cdef uint32_t gso_segment_batch(PacketRing src, uint32_t first, uint32_t count, PacketRing out,
                                bint l2, int mode, gso_stats *stats) noexcept nogil:
    # Returns source packets consumed; stops early only when out lacks room for the next one.
    cdef uint32_t i, index, length, need
    cdef uint32_t tail_before
    cdef gso_info info
    cdef int reason, got
    for i in range(count):
        index = first + i
        length = ring_len(src, index)[0]
        if not ring_slot_ok(src, index):
            stats.drops[<int>GSO_LENGTH_OVER_SLOT] += 1    # see ring.pxd: never read it
            continue
        reason = gso_validate(ring_hdr(src, index), ring_frame(src, index), length, l2, &info)
        if reason:
            stats.drops[reason] += 1
            continue
        tail_before = out.tail
        got = gso_segment_parsed(ring_frame(src, index), length, &info, out, mode)
        if got == -GSO_NO_ROOM:
            need = 1
            if info.gso_type != VNET_GSO_NONE and info.end > info.hdr_len:
                need = (info.end - info.hdr_len + info.gso_size - 1) // info.gso_size
            if need <= out.nslots:
                return i                # fits once the egress drains: try again later
        if got < 0:
            stats.drops[-got] += 1
            continue
        stats.packets += 1
        stats.superframes += info.gso_type != VNET_GSO_NONE
        stats.segments += <uint32_t>got
        while tail_before != out.tail:
            stats.bytes += ring_len(out, tail_before)[0]
            tail_before += 1
    return count


# -- Python API -----------------------------------------------------------------------------------

cdef const uint8_t[::1] _bytes_view(data, str what):
    if isinstance(data, str):
        raise TypeError(f"{what} is bytes-like, not str")
    return memoryview(data).cast("B")


cdef const uint8_t[::1] _header_view(header):
    cdef const uint8_t[::1] h = _bytes_view(header, "the virtio-net header")
    if h.shape[0] != VNET_HDR_LEN:
        raise ValueError(f"a virtio-net header is {VNET_HDR_LEN} bytes, not {h.shape[0]}")
    return h


cdef const uint8_t *_ptr(const uint8_t[::1] view) noexcept:
    # Returns the first byte of a view, or NULL for an empty one (never read: length 0).
    return &view[0] if view.shape[0] else NULL


def reason_name(int code):
    """The drop-counter name of a ``GsoReason`` code (``REASONS[code]``)."""
    if not 0 <= code < GSO_REASON_COUNT:
        raise ValueError(f"no GsoReason {code}")
    return REASONS[code]


cdef _refuse(int reason, str what):
    raise MalformedPacketError(f"{what}: {REASONS[reason]}", REASONS[reason])


def validate(header, frame, *, bint l2=True):
    """Check a virtio-net header against its frame.

    Returns ``(reason, hdr_len)``: ``reason`` is ``None`` when the packet is acceptable, else a
    name from ``REASONS``; ``hdr_len`` is the recomputed L2 + L3 + L4 header length (as far as
    parsing got). ``l2`` says whether the frame starts with an Ethernet header (tap) or not (tun).
    """
    cdef const uint8_t[::1] h = _header_view(header)
    cdef const uint8_t[::1] f = _bytes_view(frame, "the frame")
    cdef gso_info info
    cdef int reason = gso_validate(&h[0], _ptr(f), f.shape[0], l2, &info)
    return (REASONS[reason] if reason else None), info.hdr_len


def complete_checksum(header, frame, *, bint l2=True):
    """Return a copy of a non-GSO ``frame`` with its ``NEEDS_CSUM`` checksum completed.

    A frame without ``NEEDS_CSUM`` comes back unchanged. Raises ``MalformedPacketError`` (a
    ``ValueError`` whose ``reason`` names the ``REASONS`` entry) for an invalid header or a GSO
    frame.
    """
    cdef const uint8_t[::1] h = _header_view(header)
    cdef const uint8_t[::1] f = _bytes_view(frame, "the frame")
    cdef gso_info info
    cdef int reason = gso_validate(&h[0], _ptr(f), f.shape[0], l2, &info)
    if reason:
        _refuse(reason, "invalid virtio-net header")
    if info.gso_type != VNET_GSO_NONE:
        _refuse(GSO_BAD_GSO_TYPE, "a GSO superframe needs segment(), not complete_checksum()")
    out = bytearray(f)
    cdef uint8_t[::1] buf = out
    if info.flags & VNET_F_NEEDS_CSUM:
        _complete(&buf[0], info.csum_start, info.csum_offset, info.end,
                  info.csum_start == info.l4_off and info.l4_proto == IPPROTO_UDP)
    return bytes(out)


def segment(header, frame, *, bint l2=True, bint partial_csum=False, bint with_headers=False):
    """Split a GSO superframe into frames of at most ``gso_size`` payload bytes.

    Returns the frames (``bytes``), or ``(header, frame)`` pairs with ``with_headers``. A non-GSO
    packet comes back as one frame with its checksum completed. ``partial_csum`` leaves L4
    checksums partial (pseudo-header sum, header NEEDS_CSUM) as for an egress with CSUM offload.
    Raises ``MalformedPacketError`` (a ``ValueError`` with a ``reason``) for an invalid header.
    """
    cdef const uint8_t[::1] h = _header_view(header)
    cdef const uint8_t[::1] f = _bytes_view(frame, "the frame")
    cdef gso_info info
    cdef int reason = gso_validate(&h[0], _ptr(f), f.shape[0], l2, &info)
    if reason:
        _refuse(reason, "invalid virtio-net header")
    payload = info.end - info.hdr_len
    if info.gso_type == VNET_GSO_NONE:
        nseg, slot = 1, f.shape[0]
    else:
        nseg = max(1, -(-payload // info.gso_size))
        slot = info.hdr_len + min(payload, info.gso_size)
    cdef PacketRing ring = PacketRing(1 << max(0, (nseg - 1).bit_length()), max(64, slot))
    cdef int got
    cdef const uint8_t *data = _ptr(f)
    with nogil:
        got = gso_segment_parsed(data, f.shape[0], &info, ring,
                                 GSO_OUT_PARTIAL_CSUM if partial_csum else GSO_OUT_FULL_CSUM)
    if got < 0:
        _refuse(-got, "cannot segment")
    try:
        if with_headers:
            return [(ring.header(i), ring.packet(i)) for i in range(got)]
        return [ring.packet(i) for i in range(got)]
    finally:
        ring.close()


def segment_batch(PacketRing src not None, first, uint32_t count,
                  PacketRing dst not None, *, bint l2=True, bint partial_csum=False):
    """Segment ring slots ``[first, first + count)`` of ``src`` into the free slots of ``dst``.

    Output lands at ``dst.tail`` onwards and ``dst.tail`` advances; ``src.head`` does not move
    (call ``src.consume(result["consumed"])`` when ``first == src.head``). Invalid packets are
    skipped and counted by reason. Stops early only when ``dst`` is too full for the next packet.
    Returns ``{"consumed", "packets", "superframes", "segments", "bytes", "drops": {name: n}}``.
    ``first`` is any int, kept modulo 2**32. Raises ``ValueError`` before segmenting anything
    when a length of the batch exceeds ``src.slot_size``.
    """
    if src.closed or dst.closed:
        raise ValueError("the packet ring is closed")
    cdef uint32_t cfirst = ring_index(first)
    cdef uint32_t held = src.tail - cfirst         # free-running indices wrap together
    if count > held or held > src.nslots:
        raise ValueError(f"cannot segment {count} packets from slot {cfirst}: "
                         f"{src.tail - src.head} are held from slot {src.head}")
    ring_check_lengths(src, cfirst, count)
    cdef gso_stats stats
    memset(&stats, 0, sizeof(stats))
    cdef uint32_t consumed
    cdef int mode = GSO_OUT_PARTIAL_CSUM if partial_csum else GSO_OUT_FULL_CSUM
    with nogil:
        consumed = gso_segment_batch(src, cfirst, count, dst, l2, mode, &stats)
    return {
        "consumed": consumed,
        "packets": stats.packets,
        "superframes": stats.superframes,
        "segments": stats.segments,
        "bytes": stats.bytes,
        "drops": {REASONS[r]: stats.drops[r] for r in range(1, GSO_REASON_COUNT) if stats.drops[r]},
    }
