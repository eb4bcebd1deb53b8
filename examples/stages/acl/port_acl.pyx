# cython: language_level=3
"""A C stage built against an *installed* tapengine: a port ACL that runs without the GIL.

``PortAcl(udp=[...], tcp=[...])`` drops every IPv4/IPv6 packet to one of those UDP or TCP
destination ports; everything else keeps its verdict. It subclasses tapengine's ``Stage`` and
overrides the ``nogil`` ``process()`` declared in ``tapengine/_stage.pxd``, so a forwarder calls
it once per batch without taking the GIL: ``Engine(ports, stages=[PortAcl(udp=[9])])``.
"""

from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.string cimport memset

from tapengine._ring cimport PacketRing, ring_frame, ring_len
from tapengine._stage cimport VERDICT_DROP, Stage

cdef enum:
    ETH_HLEN = 14
    IPV6_HLEN = 40
    PROTO_TCP = 6
    PROTO_UDP = 17


cdef inline bint _has(const uint8_t *bitmap, uint32_t port) noexcept nogil:
    return (bitmap[port >> 3] >> (port & 7)) & 1


cdef class PortAcl(Stage):
    """Drops packets to the UDP ports ``udp`` and the TCP ports ``tcp``."""

    cdef uint8_t udp[8192]          # one bit per port
    cdef uint8_t tcp[8192]

    def __init__(self, udp=(), tcp=(), name="port_acl"):
        super().__init__(name)
        memset(self.udp, 0, sizeof(self.udp))
        memset(self.tcp, 0, sizeof(self.tcp))
        for bitmap, ports in ((0, udp), (1, tcp)):
            for port in ports:
                if not 0 <= port <= 65535:
                    raise ValueError(f"a port is 0 to 65535, not {port}")
                if bitmap == 0:
                    self.udp[port >> 3] |= 1 << (port & 7)
                else:
                    self.tcp[port >> 3] |= 1 << (port & 7)

    cdef int process(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                     int32_t *verdict) noexcept nogil:
        cdef uint32_t k, length, base, l4, dport
        cdef const uint8_t *frame
        cdef uint8_t proto
        for k in range(n):
            frame = ring_frame(ring, first + k)
            length = ring_len(ring, first + k)[0]
            base = ETH_HLEN
            if length < ETH_HLEN + 20:
                continue                    # no IP header: not ours to judge
            if frame[12] == 0x08 and frame[13] == 0x00 and (frame[base] >> 4) == 4:
                proto = frame[base + 9]
                l4 = base + (frame[base] & 0x0F) * 4
            elif frame[12] == 0x86 and frame[13] == 0xDD:
                proto = frame[base + 6]
                l4 = base + IPV6_HLEN
            else:
                continue
            if l4 + 4 > length:
                continue                    # no room for the ports
            dport = (<uint32_t>frame[l4 + 2] << 8) | frame[l4 + 3]
            if (proto == PROTO_UDP and _has(self.udp, dport)) or \
                    (proto == PROTO_TCP and _has(self.tcp, dport)):
                verdict[k] = VERDICT_DROP
        return 0
