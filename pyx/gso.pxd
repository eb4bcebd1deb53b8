# tapengine._gso: virtio-net header validation, software segmentation, checksum completion.
#
# C-level API for the forwarder and other Cython code. Everything here runs without the GIL and
# never allocates. ``hdr`` is a 10-byte ``struct virtio_net_hdr`` in host byte order (as the tun
# driver writes it on this machine); ``frame`` is the packet that follows it: an Ethernet frame
# when ``l2`` is true (tap; one 802.1Q/802.1ad tag allowed), an IP packet when false (tun).
# Offsets in the header (``hdr_len``, ``csum_start``) count from the first byte of ``frame``.
#
# Return conventions (each function also says its own):
#   gso_validate                      0 (GSO_OK) or a GsoReason > 0
#   gso_segment, gso_segment_parsed   segments written (>= 1) or -GsoReason (< 0)
#   gso_segment_batch                 source packets consumed

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from tapengine._ring cimport PacketRing
from tapengine.netorder cimport store_host16

# struct virtio_net_hdr: flags and gso_type values (linux/virtio_net.h).
cdef enum:
    VNET_F_NEEDS_CSUM = 1       # checksum from csum_start to the end, store at +csum_offset
    VNET_F_DATA_VALID = 2       # checksum already verified
    VNET_GSO_NONE = 0
    VNET_GSO_TCPV4 = 1
    VNET_GSO_UDP = 3            # UFO (IP fragmentation): refused, nobody should send it
    VNET_GSO_TCPV6 = 4
    VNET_GSO_UDP_L4 = 5         # USO
    VNET_GSO_ECN = 0x80         # TCP with ECN: CWR may be set (kept on the first segment only)

# Output modes of gso_segment*.
cdef enum:
    GSO_OUT_FULL_CSUM = 0       # every checksum computed; output header all zero (a plain frame)
    # L4 checksum left partial for an egress with CSUM but no TSO: pseudo-header sum in the
    # field, header flags NEEDS_CSUM with csum_start/csum_offset set (IPv4 header checksum full)
    GSO_OUT_PARTIAL_CSUM = 1

# Why a packet was refused: drop counters are indexed by these ("drops by reason").
# ``REASONS[code]`` in Python gives the lower-case name without the ``GSO_`` prefix.
cpdef enum GsoReason:
    GSO_OK = 0
    GSO_TOO_SHORT = 1               # frame ends inside a header, or before the IP length says
    GSO_BAD_FLAGS = 2               # flag bits other than NEEDS_CSUM | DATA_VALID
    GSO_BAD_GSO_TYPE = 3            # unknown gso_type, UFO, or ECN bit without TCP
    GSO_GSO_SIZE_ZERO = 4
    GSO_GSO_SIZE_TOO_LARGE = 5      # headers + gso_size exceed one IP packet (65535)
    GSO_CSUM_OUTSIDE_FRAME = 6      # csum_start + csum_offset + 2 beyond the packet
    GSO_CSUM_NOT_AT_L4 = 7          # csum_start before the L4 header (or, for GSO, not at it)
    GSO_BAD_CSUM_OFFSET = 8         # csum_offset is not the TCP (16) / UDP (6) checksum field
    GSO_BAD_IP_HEADER = 9           # IP version or IHL wrong
    GSO_BAD_IP_LENGTH = 10          # IPv4 total length shorter than its header
    GSO_BAD_L4_HEADER = 11          # TCP data offset < 5, UDP length impossible
    GSO_UNSUPPORTED_PROTOCOL = 12   # not IPv4/IPv6, a fragment, IPv6 fragment/AH/routing in use
    GSO_PROTOCOL_MISMATCH = 13      # gso_type disagrees with the packet (TCPV4 on IPv6, on UDP)
    GSO_NO_ROOM = 14                # destination ring has fewer free slots than segments
    GSO_SLOT_TOO_SMALL = 15         # one segment does not fit a destination slot
    GSO_LENGTH_OVER_SLOT = 16       # a source length exceeds its slot (set through ``lengths``)
    GSO_REASON_COUNT = 17


# What gso_validate learned about a packet; gso_segment_parsed works from it.
cdef struct gso_info:
    uint32_t end            # end of the IP packet (l3_off + IP length) <= frame length
    uint16_t l3_off         # 0 (tun), 14 or 18 (tap, tagged)
    uint16_t l4_off         # first byte after the IP header and IPv6 extension headers
    uint16_t hdr_len        # recomputed virtio hdr_len: L2 + L3 + L4 header bytes
    uint16_t gso_size
    uint16_t csum_start     # as in the header (meaningful with NEEDS_CSUM)
    uint16_t csum_offset
    uint8_t flags           # virtio flags
    uint8_t gso_type        # without the ECN bit
    uint8_t ip_version      # 4, 6, or 0 for a non-IP frame
    uint8_t l4_proto        # IPPROTO_TCP, IPPROTO_UDP, or whatever follows the IP header
    uint8_t csum_field      # offset of the checksum inside the L4 header: 16 TCP, 6 UDP, 0 other


# Counters of gso_segment_batch; the batch adds to them (zero them once).
cdef struct gso_stats:
    uint64_t packets        # source packets turned into output (GSO or not)
    uint64_t superframes    # of which GSO superframes
    uint64_t segments       # output frames written
    uint64_t bytes          # output frame bytes (without virtio headers)
    uint64_t drops[<int>GSO_REASON_COUNT]   # source packets dropped, by GsoReason


# Parse and check one header + frame; fill *info (hdr_len is never taken from the header).
# Returns 0 (GSO_OK) or a GsoReason > 0.
cdef int gso_validate(const uint8_t *hdr, const uint8_t *frame, uint32_t length, bint l2,
                      gso_info *info) noexcept nogil

# Store a recomputed hdr_len into a header (host order), e.g. before passing it through.
cdef inline void gso_store_hdr_len(uint8_t *hdr, uint16_t hdr_len) noexcept nogil:
    store_host16(hdr + 2, hdr_len)

# Validate, then write the frame's segments into ``out`` from ``out.tail`` on and advance tail.
# A non-GSO packet is copied as one frame, its NEEDS_CSUM checksum completed (FULL mode).
# All or nothing: on error nothing is written. Returns segments written or -GsoReason.
cdef int gso_segment(const uint8_t *hdr, const uint8_t *frame, uint32_t length, bint l2,
                     PacketRing out, int mode) noexcept nogil

# The same from a gso_info that gso_validate returned GSO_OK for (the forwarder validates
# every header anyway; this avoids a second parse). Returns segments written or -GsoReason.
cdef int gso_segment_parsed(const uint8_t *frame, uint32_t length, const gso_info *info,
                            PacketRing out, int mode) noexcept nogil

# Segment source slots [first, first + count) into ``out``; invalid packets are counted in
# stats.drops and skipped, a length over src.slot_size as GSO_LENGTH_OVER_SLOT (never read).
# Stops early only when ``out`` lacks room for the next packet.
# Returns source packets consumed (processed or dropped); src.head is not moved.
cdef uint32_t gso_segment_batch(PacketRing src, uint32_t first, uint32_t count, PacketRing out,
                                bint l2, int mode, gso_stats *stats) noexcept nogil

# Internet checksum helpers. Sums are of native-order words (byte-order independent, RFC 1071):
# store a folded result with memcpy and the bytes come out in network order.
# Returns ``acc`` plus the sum of ``n`` bytes at ``p`` (which must start at an even offset of
# the checksummed area; an odd tail byte is padded with zero).
cdef uint64_t csum_add(const uint8_t *p, size_t n, uint64_t acc) noexcept nogil

# Returns ``acc`` folded to 16 bits (not complemented).
cdef inline uint16_t csum_fold(uint64_t acc) noexcept nogil:
    acc = (acc & 0xffffffffU) + (acc >> 32)
    acc = (acc & 0xffff) + (acc >> 16)
    acc = (acc & 0xffff) + (acc >> 16)
    acc = (acc & 0xffff) + (acc >> 16)
    return <uint16_t>acc
