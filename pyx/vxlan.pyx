# cython: language_level=3, embedsignature=True
"""VXLAN (RFC 7348) as a forwarder port: encapsulation, decapsulation, VTEP learning and
head-end replication over a UDP underlay, without the GIL and without a copy.

Receive (``recv``): one ``recvmmsg()`` on the socket bound to the local address and the VXLAN
port reads each datagram into its slot 8 bytes before ``FRAME_OFFSET``, so the inner frame lands
at ``FRAME_OFFSET`` (the default position of the ring's ``frames`` view) and the header sits in
the headroom: stripping it moves nothing. A datagram is dropped and counted, in this order, when
it comes from an address that is not a configured VTEP (``unknown_vtep``: never parsed, never
learned), is shorter than the header (``short_header``), lacks the I flag (``no_vni_flag``),
carries another VNI (``wrong_vni``), has a reserved bit set (``reserved``: RFC 7348 says to
ignore them, the Linux kernel drops such datagrams since it keeps those bits for extensions, and
so do we), or carries less than an Ethernet header (``short_frame``). Datagrams dropped in the
middle of a batch close the gap by moving the later frames down (only an attacked port pays).
The inner source MAC is learned (MAC -> VTEP) unless it is multicast or zero, or a static entry
holds it; learned entries age (``ageing``), static ones (``--fdb``) never age nor move.

Send (``send``): per frame, the destination MAC is looked up: a known MAC goes to its VTEP; a
broadcast, multicast or unknown destination goes to every remote (head-end replication). The
8-byte header is a second iovec (the same bytes for every datagram), so the ring's slot is never
written: a frame being flooded is still read by the other ports after us. The sending socket is
picked from a pool bound to ports 49152-65535 by a hash of the inner flow (addresses, protocol
and ports of IPv4/IPv6 TCP and UDP; the MACs otherwise): one flow keeps one source port, flows
spread over the underlay's ECMP paths and the receivers' RSS queues, as the kernel's vxlan does.
The queued datagrams go out with one ``sendmmsg()`` run per socket. A send never stops the
batch: every frame is sent or counted in a drop column, and ``send`` returns ``count``.
"""

cimport cython
from libc.errno cimport EAGAIN, EINTR, EMSGSIZE, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from posix.fcntl cimport F_DUPFD_CLOEXEC, fcntl
from posix.time cimport clock_gettime, timespec
from posix.unistd cimport close

from tapengine._batchio cimport PortIO
from tapengine._ring cimport (
    FRAME_OFFSET, PacketRing, ring_free, ring_frame, ring_len, ring_off, ring_peer, ring_slot,
    ring_slot_ok, te_sockaddr,
)
from tapengine._gso cimport (
    VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_TCPV6, csum_add, csum_fold,
)
from tapengine.includes.consts cimport ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, VNET_HDR_LEN
from tapengine.netorder cimport load_be16, load_be32, store_be16
from tapengine.includes.system cimport (
    AF_INET, AF_INET6, CLOCK_MONOTONIC_COARSE, MSG_DONTWAIT, MSG_TRUNC, htons, iovec, mmsghdr,
    pthread_mutex_destroy, pthread_mutex_init, pthread_mutex_lock, pthread_mutex_unlock,
    recvmmsg, sendmmsg,
)
from tapengine.syscall cimport fd_of, raise_errno

import ipaddress
import socket

import numpy as np

#: Column names of ``VxlanIO.counters``, in the order of the counter enum (pyx/vxlan.pxd).
COUNTER_NAMES = (
    "rx_datagrams", "rx_frames", "tx_frames", "tx_datagrams", "tx_bytes", "flooded", "learned",
    "moved", "drop_unknown_vtep", "drop_short_header", "drop_no_vni_flag", "drop_wrong_vni",
    "drop_reserved", "drop_short_frame", "drop_truncated", "drop_no_remote", "drop_bad_frame",
    "drop_tx_full", "drop_too_big", "drop_tx_error", "gso_sends", "superframes", "coalesced",
    "gso_fallbacks",
    "last_errno",
)
assert len(COUNTER_NAMES) == VX_N_COUNTERS

#: Drop reasons (the ``drop_*`` columns without their prefix), receive side first.
DROP_REASONS = tuple(name[5:] for name in COUNTER_NAMES if name.startswith("drop_"))

#: The VXLAN header's I flag (first byte): the VNI is valid.
FLAG_VNI = VXLAN_FLAG_I
#: The UDP port IANA assigned to VXLAN (the Linux kernel's default is the older 8472).
IANA_PORT = 4789
MAX_VNI = (1 << 24) - 1

cdef extern from *:
    """
    #define TE_VX_VALID (1ULL << 63)
    """
    const uint64_t VALID_BIT "TE_VX_VALID"

cdef extern from "<sys/socket.h>" nogil:
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    size_t CMSG_LEN(size_t)
    size_t CMSG_SPACE(size_t)
    uint8_t *CMSG_DATA(cmsghdr *)
    int setsockopt(int fd, int level, int optname, const void *optval, unsigned int optlen)
    enum: SOL_SOCKET

cdef extern from "<netinet/udp.h>" nogil:
    enum:
        SOL_UDP
        UDP_SEGMENT

cdef enum:
    SO_NO_CHECK = 11            # asm-generic/socket.h; libc headers do not name it


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline uint64_t _mac_at(const uint8_t *p) noexcept nogil:
    return ((<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24)
            | (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | <uint64_t>p[5])


cdef inline uint32_t _load32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t _mix(uint64_t h, uint64_t v) noexcept nogil:
    h ^= v
    h *= <uint64_t>0x9E3779B97F4A7C15
    return h ^ (h >> 29)


@cython.boundscheck(False)
cdef uint64_t flow_hash(const uint8_t *f, uint32_t n) noexcept nogil:
    # Returns a hash of the inner flow of Ethernet frame ``f`` (``n`` bytes): addresses, protocol
    # and (TCP/UDP, first fragment) ports of IPv4 and IPv6, past one VLAN tag; else the MACs.
    cdef uint32_t l3 = ETH_HLEN, ihl, k
    cdef uint16_t etype = (f[12] << 8) | f[13]
    cdef uint8_t proto
    cdef uint64_t h = 0x243F6A8885A308D3
    if (etype == 0x8100 or etype == 0x88A8) and n >= ETH_HLEN + 4:
        etype = (f[16] << 8) | f[17]
        l3 += 4
    if etype == 0x0800 and n >= l3 + 20:
        ihl = (f[l3] & 0xF) * 4
        proto = f[l3 + 9]
        h = _mix(_mix(_mix(h, _load32(f + l3 + 12)), _load32(f + l3 + 16)), proto)
        if ((proto == IPPROTO_TCP or proto == IPPROTO_UDP) and ihl >= 20
                and ((f[l3 + 6] & 0x1F) | f[l3 + 7]) == 0 and n >= l3 + ihl + 4):
            h = _mix(h, _load32(f + l3 + ihl))
    elif etype == 0x86DD and n >= l3 + 40:
        proto = f[l3 + 6]
        for k in range(8, 40, 4):
            h = _mix(h, _load32(f + l3 + k))
        h = _mix(h, proto)
        if (proto == IPPROTO_TCP or proto == IPPROTO_UDP) and n >= l3 + 44:
            h = _mix(h, _load32(f + l3 + 40))
    else:
        h = _mix(_mix(h, _mac_at(f)), _mac_at(f + 6))
    return h


def inner_flow_hash(frame):
    """The hash ``send`` picks a frame's source socket with (for tests: one flow, one port)."""
    cdef const uint8_t[::1] view = frame
    if view.shape[0] < ETH_HLEN:
        raise ValueError(f"a frame of {view.shape[0]} bytes is shorter than an Ethernet header")
    return flow_hash(&view[0], <uint32_t>view.shape[0])


def _sockaddr_bytes(host, int port):
    """``host`` (an IPv4 or IPv6 address) and ``port`` as the bytes of a sockaddr_in(6)."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        return (socket.AF_INET.to_bytes(2, "little") + port.to_bytes(2, "big")
                + address.packed + bytes(8))
    return (socket.AF_INET6.to_bytes(2, "little") + port.to_bytes(2, "big") + bytes(4)
            + address.packed + bytes(4))


cdef class VxlanIO(PortIO):
    """A VXLAN tunnel endpoint for the forwarder (``Forwarder.add_port(..., port_io=...)``).

    ``sock``: the UDP socket bound to the local address and the VXLAN port (it receives);
    ``send_socks``: the pool the datagrams leave from (one source port each, at least one);
    ``vni``: 0 to 2**24 - 1; ``vteps``: every address the port may talk to, as ``(host, port)``
    of one family, the first ``nremotes`` of them the remotes that broadcast, multicast and
    unknown unicast are replicated to (the rest are VTEPs named only by static entries,
    ``add_static``). The port keeps its own ``dup()`` of every socket (closed by ``close()``).
    ``table_size`` MACs at most (4-way set-associative), learned ones forgotten after
    ``ageing`` seconds unseen.

    The sockets are set up by ``tapengine.vxlan`` (non-blocking, checksum and DF options, the
    namespace); this class only moves datagrams.
    """

    def __cinit__(self, *args, **kwargs):
        self.nvteps = self.nremotes = self.nsocks = 0
        self.rmsgs = <mmsghdr *>calloc(RECV_BATCH, sizeof(mmsghdr))
        self.riov = <iovec *>calloc(RECV_BATCH, sizeof(iovec))
        self.smsgs = <mmsghdr *>calloc(SEND_QUEUE, sizeof(mmsghdr))
        self.siov = <iovec *>calloc(2 * SEND_QUEUE, sizeof(iovec))
        self.pend = <Pending *>calloc(SEND_QUEUE, sizeof(Pending))
        self.gmsgs = <mmsghdr *>calloc(SEND_QUEUE, sizeof(mmsghdr))
        self.gcount = <uint32_t *>calloc(SEND_QUEUE, sizeof(uint32_t))
        self.gfirst = <uint32_t *>calloc(SEND_QUEUE, sizeof(uint32_t))
        self.cmsgs = <uint8_t *>calloc(SEND_QUEUE, CMSG_ROOM)
        if not (self.rmsgs and self.riov and self.smsgs and self.siov and self.pend
                and self.gmsgs and self.gcount and self.gfirst and self.cmsgs):
            raise MemoryError()
        pthread_mutex_init(&self.lock, NULL)

    def __init__(self, sock, send_socks, int vni, vteps, int nremotes, *,
                 int table_size=4096, double ageing=300.0, bint gso=False):
        if self.fd >= 0 or self.table != NULL:
            raise RuntimeError("a VxlanIO is set up once")
        if not 0 <= vni <= MAX_VNI:
            raise ValueError(f"VNI {vni} is out of range (0 to {MAX_VNI})")
        vteps = list(vteps)
        send_socks = list(send_socks)
        if not 0 < len(vteps) <= MAX_VTEPS:
            raise ValueError(f"give 1 to {MAX_VTEPS} VTEP addresses, not {len(vteps)}")
        if not 0 <= nremotes <= len(vteps):
            raise ValueError(f"nremotes {nremotes} is not within the {len(vteps)} VTEPs")
        if not 0 < len(send_socks) <= MAX_SOCKETS:
            raise ValueError(f"give 1 to {MAX_SOCKETS} sending sockets, not {len(send_socks)}")
        if not 4 <= table_size <= 1 << 24:
            raise ValueError(f"table size {table_size} is out of range (4 to {1 << 24})")
        if not 0 < ageing <= 1e7:
            raise ValueError(f"ageing {ageing} s is out of range (0 to 1e7]")
        encoded = [_sockaddr_bytes(host, port) for host, port in vteps]
        if len({len(raw) for raw in encoded}) != 1:
            raise ValueError("every VTEP address must be of one family (IPv4 or IPv6)")
        cdef bytes raw
        cdef int k
        for k in range(len(encoded)):
            raw = encoded[k]
            memset(&self.vteps[k], 0, sizeof(te_sockaddr))
            memcpy(&self.vteps[k], <const char *>raw, len(raw))
        self.vtep_len = len(encoded[0])
        self.ipv4 = self.vteps[0].sa.sa_family == AF_INET
        self.gso = gso
        self.nvteps = len(encoded)
        self.nremotes = nremotes
        self.vni = vni
        self.header[0] = VXLAN_FLAG_I
        self.header[1] = self.header[2] = self.header[3] = 0
        self.header[4] = (vni >> 16) & 0xFF
        self.header[5] = (vni >> 8) & 0xFF
        self.header[6] = vni & 0xFF
        self.header[7] = 0
        cdef uint32_t nbuckets = 1
        while nbuckets * VTEP_WAYS < <uint32_t>table_size:
            nbuckets <<= 1
        self.table = <VtepEntry *>calloc(nbuckets * VTEP_WAYS, sizeof(VtepEntry))
        if self.table == NULL:
            raise MemoryError()
        self.nbuckets = nbuckets
        self.shift = 64 - (nbuckets.bit_length() - 1)
        self.ageing_ns = <uint64_t>(ageing * 1e9)
        self._counters = np.zeros(VX_N_COUNTERS, dtype=np.uint64)
        cdef uint64_t[::1] view = self._counters
        self.counters = &view[0]
        self.fd = self._dup_fd(fd_of(sock))
        self.l2 = True
        for s in send_socks:
            self.socks[self.nsocks] = self._dup_fd(fd_of(s))
            self.nocheck[self.nsocks] = self.ipv4      # tapengine.vxlan set SO_NO_CHECK
            self.nsocks += 1

    cdef int _dup_fd(self, int fd) except -1:
        cdef int own = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        if own < 0:
            raise_errno(errno, f"duplicating fd {fd}")
        return own

    def __dealloc__(self):
        self._close_fd()
        free(self.rmsgs)
        free(self.riov)
        free(self.smsgs)
        free(self.siov)
        free(self.pend)
        free(self.gmsgs)
        free(self.gcount)
        free(self.gfirst)
        free(self.cmsgs)
        free(self.table)
        pthread_mutex_destroy(&self.lock)

    cdef void _close_fd(self) noexcept:
        # The receiving socket and the whole sending pool (``close()`` comes here).
        cdef int k
        for k in range(self.nsocks):
            close(self.socks[k])
        self.nsocks = 0
        PortIO._close_fd(self)

    @property
    def counters(self):
        """The live counters (numpy uint64, columns ``COUNTER_NAMES``), read without stopping."""
        return self._counters

    def counter_dict(self):
        """The counters by name, a consistent copy."""
        values = np.array(self._counters)
        return {name: int(values[k]) for k, name in enumerate(COUNTER_NAMES)}

    def vtep(self, int index):
        """VTEP ``index`` as ``(host, port)``."""
        if not 0 <= index < self.nvteps:
            raise IndexError(f"no VTEP {index} (there are {self.nvteps})")
        cdef te_sockaddr *sa = &self.vteps[index]
        if sa.sa.sa_family == AF_INET:
            host = str(ipaddress.IPv4Address((<uint8_t *>&sa.in4.sin_addr)[:4]))
            port = sa.in4.sin_port
        else:
            host = str(ipaddress.IPv6Address((<uint8_t *>&sa.in6.sin6_addr)[:16]))
            port = sa.in6.sin6_port
        return host, socket.ntohs(port)

    def source_ports(self):
        """The UDP source port of each sending socket of the pool."""
        return [_local_port(self.socks[k]) for k in range(self.nsocks)]

    # -- the VTEP table --------------------------------------------------------------------------

    cdef VtepEntry *_bucket_of(self, uint64_t mac) noexcept nogil:
        cdef uint64_t h = (mac * <uint64_t>0x9E3779B97F4A7C15) >> self.shift
        return self.table + (h & (self.nbuckets - 1)) * VTEP_WAYS

    cdef void _learn(self, uint64_t mac, int32_t vtep, uint64_t now) noexcept nogil:
        cdef VtepEntry *bucket = self._bucket_of(mac)
        cdef VtepEntry *free_entry = NULL
        cdef VtepEntry *oldest = NULL
        cdef uint64_t key = mac | VALID_BIT
        cdef int w
        for w in range(VTEP_WAYS):
            if bucket[w].key == key:
                if bucket[w].is_static:
                    return                      # static entries never move
                if bucket[w].vtep != vtep:
                    bucket[w].vtep = vtep
                    self.counters[VX_MOVED] += 1
                bucket[w].seen_ns = now
                return
            if bucket[w].key == 0 or (not bucket[w].is_static and <int64_t>(
                    now - bucket[w].seen_ns) > <int64_t>self.ageing_ns):
                if free_entry == NULL:
                    free_entry = &bucket[w]
            elif not bucket[w].is_static and (oldest == NULL
                                              or bucket[w].seen_ns < oldest.seen_ns):
                oldest = &bucket[w]
        if free_entry == NULL:
            free_entry = oldest
        if free_entry == NULL:
            return                              # a bucket of static entries: not learned
        free_entry.key = key
        free_entry.vtep = vtep
        free_entry.seen_ns = now
        free_entry.is_static = 0
        self.counters[VX_LEARNED] += 1

    cdef int32_t _lookup(self, uint64_t mac, uint64_t now) noexcept nogil:
        cdef VtepEntry *bucket = self._bucket_of(mac)
        cdef uint64_t key = mac | VALID_BIT
        cdef int w
        for w in range(VTEP_WAYS):
            if bucket[w].key == key:
                if bucket[w].is_static or <int64_t>(
                        now - bucket[w].seen_ns) <= <int64_t>self.ageing_ns:
                    return bucket[w].vtep
                return -1
        return -1

    def add_static(self, str mac, int vtep):
        """A static entry (``--fdb``): frames to ``mac`` go to VTEP ``vtep``, for good."""
        if not 0 <= vtep < self.nvteps:
            raise IndexError(f"no VTEP {vtep} (there are {self.nvteps})")
        cdef uint64_t key = _parse_mac(mac) | VALID_BIT
        cdef VtepEntry *bucket = self._bucket_of(key & ~VALID_BIT)
        cdef VtepEntry *slot = NULL
        cdef int w
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            for w in range(VTEP_WAYS):
                if bucket[w].key == key:
                    slot = &bucket[w]
                    break
                if slot == NULL and (bucket[w].key == 0 or not bucket[w].is_static):
                    slot = &bucket[w]
            if slot == NULL:
                raise ValueError(f"the VTEP table has no room for another static entry near "
                                 f"{mac}: give a larger table size")
            slot.key = key
            slot.vtep = vtep
            slot.is_static = 1
            slot.seen_ns = 0
        finally:
            pthread_mutex_unlock(&self.lock)

    def lookup_mac(self, str mac):
        """The VTEP index behind ``mac``, or -1 when unknown or aged out."""
        cdef uint64_t key = _parse_mac(mac)
        cdef int32_t vtep
        with nogil:
            pthread_mutex_lock(&self.lock)
            vtep = self._lookup(key, _now_ns())
            pthread_mutex_unlock(&self.lock)
        return vtep

    def entries(self):
        """Every live entry as ``(mac, vtep index, age in seconds, static)``."""
        cdef uint32_t k, total = self.nbuckets * VTEP_WAYS
        cdef uint64_t now
        cdef VtepEntry entry
        rows = []
        with nogil:
            pthread_mutex_lock(&self.lock)
        try:
            now = _now_ns()
            for k in range(total):
                entry = self.table[k]
                if entry.key == 0:
                    continue
                if not entry.is_static and <int64_t>(now - entry.seen_ns) > <int64_t>self.ageing_ns:
                    continue
                rows.append((_format_mac(entry.key & ~VALID_BIT), entry.vtep,
                             0.0 if entry.is_static else (now - entry.seen_ns) / 1e9,
                             bool(entry.is_static)))
        finally:
            pthread_mutex_unlock(&self.lock)
        return sorted(rows)

    cdef int _vtep_of(self, const te_sockaddr *peer) noexcept nogil:
        cdef int k
        if peer.sa.sa_family == AF_INET:
            for k in range(self.nvteps):
                if (self.vteps[k].sa.sa_family == AF_INET and self.vteps[k].in4.sin_addr.s_addr
                        == peer.in4.sin_addr.s_addr):
                    return k
        elif peer.sa.sa_family == AF_INET6:
            for k in range(self.nvteps):
                if (self.vteps[k].sa.sa_family == AF_INET6 and memcmp(
                        &self.vteps[k].in6.sin6_addr, &peer.in6.sin6_addr, 16) == 0):
                    return k
        return -1

    # -- receive ---------------------------------------------------------------------------------

    @cython.boundscheck(False)
    cdef uint32_t recv(self, PacketRing ring, uint32_t budget, int *err) noexcept nogil:
        # Returns the inner frames handed on (slots [tail, tail + n), tail advanced).
        cdef uint32_t k, w = 0, length, tail = ring.tail, flen
        cdef int n, vtep
        cdef uint8_t *slot
        cdef uint8_t *h
        cdef uint8_t *frame
        cdef uint64_t now, src
        cdef uint32_t vni
        err[0] = 0
        if self.fd < 0:
            err[0] = 9      # EBADF
            return 0
        if budget > ring_free(ring):
            budget = ring_free(ring)
        if budget > RECV_BATCH:
            budget = RECV_BATCH
        if budget == 0:
            return 0
        for k in range(budget):
            self.riov[k].iov_base = ring_slot(ring, tail + k) + FRAME_OFFSET - VXLAN_HLEN
            self.riov[k].iov_len = ring.slot_size + VXLAN_HLEN + 1
            self.rmsgs[k].msg_hdr.msg_name = ring_peer(ring, tail + k)
            self.rmsgs[k].msg_hdr.msg_namelen = sizeof(te_sockaddr)
            self.rmsgs[k].msg_hdr.msg_iov = &self.riov[k]
            self.rmsgs[k].msg_hdr.msg_iovlen = 1
            self.rmsgs[k].msg_hdr.msg_control = NULL
            self.rmsgs[k].msg_hdr.msg_controllen = 0
            self.rmsgs[k].msg_hdr.msg_flags = 0
        while True:
            n = recvmmsg(self.fd, self.rmsgs, budget, MSG_DONTWAIT, NULL)
            if n >= 0 or errno != EINTR:
                break
        if n < 0:
            if errno != EAGAIN:
                err[0] = errno
            return 0
        self.counters[VX_RX_DATAGRAMS] += <uint32_t>n
        pthread_mutex_lock(&self.lock)
        now = _now_ns()
        for k in range(<uint32_t>n):
            slot = ring_slot(ring, tail + k)
            vtep = self._vtep_of(ring_peer(ring, tail + k))
            if vtep < 0:
                self.counters[VX_DROP_UNKNOWN_VTEP] += 1
                continue
            length = self.rmsgs[k].msg_len
            if (self.rmsgs[k].msg_hdr.msg_flags & MSG_TRUNC
                    or length > ring.slot_size + VXLAN_HLEN):
                self.counters[VX_DROP_TRUNCATED] += 1
                ring.truncated += 1
                continue
            if length < VXLAN_HLEN:
                self.counters[VX_DROP_SHORT_HEADER] += 1
                continue
            h = slot + FRAME_OFFSET - VXLAN_HLEN
            if not (h[0] & VXLAN_FLAG_I):
                self.counters[VX_DROP_NO_VNI_FLAG] += 1
                continue
            vni = (<uint32_t>h[4] << 16) | (<uint32_t>h[5] << 8) | h[6]
            if vni != self.vni:
                self.counters[VX_DROP_WRONG_VNI] += 1
                continue
            if h[0] != VXLAN_FLAG_I or h[1] or h[2] or h[3] or h[7]:
                self.counters[VX_DROP_RESERVED] += 1
                continue
            flen = length - VXLAN_HLEN
            if flen < ETH_HLEN:
                self.counters[VX_DROP_SHORT_FRAME] += 1
                continue
            frame = slot + FRAME_OFFSET
            src = _mac_at(frame + 6)
            if not (frame[6] & 1) and src != 0:
                self._learn(src, vtep, now)
            if self.co_open:
                if self._merge(ring, frame, flen):
                    continue            # its payload joined the superframe in slot w - 1
                self._close(ring)
            if w != k:      # close the gap a dropped datagram left
                memcpy(ring_slot(ring, tail + w) + FRAME_OFFSET, frame, flen)
                memcpy(ring_peer(ring, tail + w), ring_peer(ring, tail + k), sizeof(te_sockaddr))
            # no virtio-net work to do for this frame: an all-zero header in front of it
            memset(ring_slot(ring, tail + w) + FRAME_OFFSET - VNET_HDR_LEN, 0, VNET_HDR_LEN)
            ring_len(ring, tail + w)[0] = flen
            ring_off(ring, tail + w)[0] = FRAME_OFFSET
            if self.coalesce:
                self._open(ring, tail + w)
            w += 1
        pthread_mutex_unlock(&self.lock)
        if self.co_open:
            self._close(ring)
        self.counters[VX_RX_FRAMES] += w
        ring.tail = tail + w
        return w

    # -- coalescing ------------------------------------------------------------------------------

    @cython.boundscheck(False)
    cdef uint32_t _tcp_segment(self, const uint8_t *f, uint32_t n) noexcept nogil:
        # Returns the TCP header offset, or 0 when the frame cannot join a superframe.
        cdef uint16_t etype = load_be16(f + 12)
        cdef uint32_t l4, thl, l4_len
        cdef uint64_t acc
        if etype == 0x0800:
            if (n < ETH_HLEN + 40 or f[ETH_HLEN] != 0x45 or f[ETH_HLEN + 9] != IPPROTO_TCP
                    or (load_be16(f + ETH_HLEN + 6) & 0x3FFF)          # MF or a fragment offset
                    or load_be16(f + ETH_HLEN + 2) != n - ETH_HLEN):   # padded, or cut
                return 0
            l4 = ETH_HLEN + 20
            l4_len = n - l4
            acc = csum_add(f + ETH_HLEN + 12, 8, 0)
        elif etype == 0x86DD:
            if (n < ETH_HLEN + 60 or (f[ETH_HLEN] >> 4) != 6 or f[ETH_HLEN + 6] != IPPROTO_TCP
                    or load_be16(f + ETH_HLEN + 4) != n - ETH_HLEN - 40):
                return 0
            l4 = ETH_HLEN + 40
            l4_len = n - l4
            acc = csum_add(f + ETH_HLEN + 8, 32, 0)
        else:
            return 0
        thl = (f[l4 + 12] >> 4) * 4
        if thl < 20 or l4_len <= thl or (f[l4 + 13] & ~0x08) != 0x10:     # ACK, maybe PSH
            return 0
        acc += htons(<uint16_t>l4_len) + htons(IPPROTO_TCP)     # the rest of the pseudo header
        if csum_fold(csum_add(f + l4, l4_len, acc)) != 0xFFFF:
            return 0                                # a bad checksum is the kernel's to drop
        return l4

    cdef void _open(self, PacketRing ring, uint32_t slot) noexcept nogil:
        cdef const uint8_t *f = ring_frame(ring, slot)
        cdef uint32_t n = ring_len(ring, slot)[0]
        cdef uint32_t l4 = self._tcp_segment(f, n)
        if l4 == 0 or f[l4 + 13] & 0x08:            # PSH: the sender flushed; nothing follows
            return
        self.co_open = True
        self.co_slot = slot
        self.co_len = n
        self.co_l4 = l4
        self.co_hlen = l4 + (f[l4 + 12] >> 4) * 4
        self.co_mss = n - self.co_hlen
        self.co_next_seq = load_be32(f + l4 + 4) + self.co_mss
        self.co_segs = 1
        self.co_v6 = l4 == ETH_HLEN + 40

    cdef bint _merge(self, PacketRing ring, const uint8_t *f, uint32_t n) noexcept nogil:
        cdef uint8_t *s = ring_frame(ring, self.co_slot)
        cdef uint32_t l4 = self.co_l4, hlen = self.co_hlen, payload
        if n <= hlen or self._tcp_segment(f, n) != l4 or (f[l4 + 12] >> 4) * 4 + l4 != hlen:
            return False
        payload = n - hlen
        if (payload > self.co_mss or self.co_len + payload > ring.slot_size
                or self.co_len + payload - ETH_HLEN > 65535
                or load_be32(f + l4 + 4) != self.co_next_seq
                or memcmp(f, s, ETH_HLEN) != 0                      # MACs, ethertype
                or memcmp(f + l4, s + l4, 4) != 0                   # ports
                or memcmp(f + l4 + 8, s + l4 + 8, 5) != 0           # ack, header length
                or memcmp(f + l4 + 20, s + l4 + 20, hlen - l4 - 20) != 0):  # options
            return False
        if self.co_v6:
            if memcmp(f + ETH_HLEN, s + ETH_HLEN, 4) != 0 or memcmp(
                    f + ETH_HLEN + 6, s + ETH_HLEN + 6, 34) != 0:  # class, flow, hops, addresses
                return False
        elif (f[ETH_HLEN + 1] != s[ETH_HLEN + 1] or memcmp(f + ETH_HLEN + 6, s + ETH_HLEN + 6, 4)
              or memcmp(f + ETH_HLEN + 12, s + ETH_HLEN + 12, 8)):  # TOS, DF/TTL/proto, addrs
            return False
        memcpy(s + self.co_len, f + hlen, payload)
        memcpy(s + l4 + 14, f + l4 + 14, 2)                         # the latest window
        self.co_len += payload
        self.co_next_seq += payload
        self.co_segs += 1
        if f[l4 + 13] & 0x08 or payload < self.co_mss:
            s[l4 + 13] |= f[l4 + 13] & 0x08
            self._close(ring)                       # PSH or a short segment ends the burst
        return True

    cdef void _close(self, PacketRing ring) noexcept nogil:
        cdef uint8_t *s = ring_frame(ring, self.co_slot)
        cdef uint8_t *hdr = s - VNET_HDR_LEN
        cdef uint32_t l4 = self.co_l4, l4_len = self.co_len - self.co_l4
        cdef uint64_t acc
        cdef uint16_t v
        self.co_open = False
        if self.co_segs < 2:
            return                                  # one segment: the frame as it came
        ring_len(ring, self.co_slot)[0] = self.co_len
        if self.co_v6:
            store_be16(s + ETH_HLEN + 4, <uint16_t>l4_len)
            acc = csum_add(s + ETH_HLEN + 8, 32, 0)
        else:
            store_be16(s + ETH_HLEN + 2, <uint16_t>(self.co_len - ETH_HLEN))
            s[ETH_HLEN + 10] = s[ETH_HLEN + 11] = 0
            v = ~csum_fold(csum_add(s + ETH_HLEN, 20, 0))
            memcpy(s + ETH_HLEN + 10, &v, 2)
            acc = csum_add(s + ETH_HLEN + 12, 8, 0)
        # CHECKSUM_PARTIAL as TSO has it: the pseudo-header sum in the field, the kernel (or
        # whoever segments it again) completes the rest; every segment's own sum was verified.
        acc += htons(<uint16_t>l4_len) + htons(IPPROTO_TCP)
        v = csum_fold(acc)
        memcpy(s + l4 + 16, &v, 2)
        hdr[0] = VNET_F_NEEDS_CSUM
        hdr[1] = VNET_GSO_TCPV6 if self.co_v6 else VNET_GSO_TCPV4
        v = <uint16_t>self.co_hlen
        memcpy(hdr + 2, &v, 2)
        v = <uint16_t>self.co_mss
        memcpy(hdr + 4, &v, 2)
        v = <uint16_t>l4
        memcpy(hdr + 6, &v, 2)
        v = 16
        memcpy(hdr + 8, &v, 2)
        self.counters[VX_SUPERFRAMES] += 1
        self.counters[VX_COALESCED] += self.co_segs

    # -- send ------------------------------------------------------------------------------------

    @cython.boundscheck(False)
    cdef uint32_t send(self, PacketRing ring, uint32_t first, uint32_t count,
                       int *err) noexcept nogil:
        # Returns ``count``: every frame is sent (to one VTEP or every remote) or counted dropped.
        cdef uint32_t done = 0, chunk, k, i
        cdef uint64_t now
        cdef uint8_t *frame
        cdef int32_t t
        cdef int sock, r
        err[0] = 0
        if self.fd < 0:
            err[0] = 9      # EBADF
            return 0
        self.counters[VX_TX_FRAMES] += count
        while done < count:
            chunk = count - done
            if chunk > RECV_BATCH:
                chunk = RECV_BATCH
            # Pass 1, under the lock: where each frame goes. No syscall while it is held.
            pthread_mutex_lock(&self.lock)
            now = _now_ns()
            for k in range(chunk):
                i = first + done + k
                if not ring_slot_ok(ring, i) or ring_len(ring, i)[0] < ETH_HLEN:
                    self.target[k] = -2
                    continue
                frame = ring_frame(ring, i)
                self.target[k] = -1 if frame[0] & 1 else self._lookup(_mac_at(frame), now)
            pthread_mutex_unlock(&self.lock)
            # Pass 2: queue the datagrams, each from the socket its flow hashes to.
            for k in range(chunk):
                i = first + done + k
                t = self.target[k]
                if t == -2:
                    self.counters[VX_DROP_BAD_FRAME] += 1
                    continue
                if t == -1 and self.nremotes == 0:
                    self.counters[VX_DROP_NO_REMOTE] += 1
                    continue
                sock = <int>(flow_hash(ring_frame(ring, i), ring_len(ring, i)[0])
                             % <uint64_t>self.nsocks)
                if t >= 0:
                    self._queue(ring, i, t, sock)
                    continue
                self.counters[VX_FLOODED] += 1
                for r in range(self.nremotes):
                    self._queue(ring, i, r, sock)
            done += chunk
        self._flush(ring)
        return count

    cdef void _queue(self, PacketRing ring, uint32_t slot, int vtep, int sock) noexcept nogil:
        if self.npend == SEND_QUEUE:
            self._flush(ring)
        self.pend[self.npend].slot = slot
        self.pend[self.npend].vtep = <uint16_t>vtep
        self.pend[self.npend].sock = <uint16_t>sock
        self.npend += 1

    @cython.boundscheck(False)
    cdef void _flush(self, PacketRing ring) noexcept nogil:
        cdef uint32_t start[MAX_SOCKETS + 1]
        cdef uint32_t fill[MAX_SOCKETS]
        cdef uint32_t k, j
        cdef int s
        cdef Pending *p
        if self.npend == 0:
            return
        memset(start, 0, sizeof(start))
        for k in range(self.npend):
            start[self.pend[k].sock + 1] += 1
        for s in range(self.nsocks):
            start[s + 1] += start[s]
            fill[s] = start[s]
        for k in range(self.npend):     # grouped by socket, in order within each socket
            p = &self.pend[k]
            j = fill[p.sock]
            fill[p.sock] += 1
            self.siov[2 * j].iov_base = self.header
            self.siov[2 * j].iov_len = VXLAN_HLEN
            self.siov[2 * j + 1].iov_base = ring_frame(ring, p.slot)
            self.siov[2 * j + 1].iov_len = ring_len(ring, p.slot)[0]
            self.smsgs[j].msg_hdr.msg_name = &self.vteps[p.vtep]
            self.smsgs[j].msg_hdr.msg_namelen = self.vtep_len
            self.smsgs[j].msg_hdr.msg_iov = &self.siov[2 * j]
            self.smsgs[j].msg_hdr.msg_iovlen = 2
            self.smsgs[j].msg_hdr.msg_control = NULL
            self.smsgs[j].msg_hdr.msg_controllen = 0
            self.smsgs[j].msg_hdr.msg_flags = 0
        for s in range(self.nsocks):
            if start[s + 1] > start[s]:
                self._send_gso(s, start[s], start[s + 1] - start[s])
        self.npend = 0

    @cython.boundscheck(False)
    cdef void _send_gso(self, int s, uint32_t first, uint32_t n) noexcept nogil:
        # Runs of datagrams to one VTEP, all of one size but the last (which may be shorter), go
        # out as one GSO send each (UDP_SEGMENT: the kernel, or the NIC, cuts them); the runs
        # and the single datagrams of this socket leave in one sendmmsg().
        cdef uint32_t j = first, end = first + n, k, size, total, ng = 0, done = 0
        cdef int sent
        cdef cmsghdr *cm
        cdef bint any_gso = False
        if not self.gso:
            self._set_nocheck(s, True)
            self._send_all(self.socks[s], &self.smsgs[first], n)
            return
        while j < end:
            size = VXLAN_HLEN + self.siov[2 * j + 1].iov_len
            total = size
            k = 1
            while (j + k < end and k < GSO_MAX_SEGS and total + size <= GSO_MAX_BYTES
                   and self.smsgs[j + k].msg_hdr.msg_name == self.smsgs[j].msg_hdr.msg_name
                   and VXLAN_HLEN + self.siov[2 * (j + k) + 1].iov_len <= size):
                total += VXLAN_HLEN + self.siov[2 * (j + k) + 1].iov_len
                k += 1
                if VXLAN_HLEN + self.siov[2 * (j + k - 1) + 1].iov_len < size:
                    break           # a shorter datagram ends a run
            self.gmsgs[ng] = self.smsgs[j]
            self.gcount[ng] = k
            self.gfirst[ng] = j
            if k > 1:
                any_gso = True
                self.gmsgs[ng].msg_hdr.msg_iovlen = 2 * k
                cm = <cmsghdr *>(self.cmsgs + ng * CMSG_ROOM)
                memset(cm, 0, CMSG_ROOM)
                cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                cm.cmsg_level = SOL_UDP
                cm.cmsg_type = UDP_SEGMENT
                (<uint16_t *>CMSG_DATA(cm))[0] = <uint16_t>size
                self.gmsgs[ng].msg_hdr.msg_control = cm
                self.gmsgs[ng].msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            ng += 1
            j += k
        # The kernel refuses GSO on a socket that sends without checksums (IPv4's zero).
        self._set_nocheck(s, not any_gso)
        while done < ng:
            sent = sendmmsg(self.socks[s], self.gmsgs + done, ng - done, MSG_DONTWAIT)
            if sent > 0:
                for k in range(done, done + <uint32_t>sent):
                    self.counters[VX_TX_BYTES] += self.gmsgs[k].msg_len
                    self.counters[VX_TX_DATAGRAMS] += self.gcount[k]
                    if self.gcount[k] > 1:
                        self.counters[VX_GSO_SENDS] += 1
                done += <uint32_t>sent
                continue
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                for k in range(done, ng):
                    self.counters[VX_DROP_TX_FULL] += self.gcount[k]
                self.counters[VX_LAST_ERRNO] = EAGAIN
                return
            if self.gcount[done] > 1:
                # GSO refused (no checksum offload on the way, an old kernel): these go one by
                # one, and so does everything after.
                self.counters[VX_GSO_FALLBACKS] += 1
                self.counters[VX_LAST_ERRNO] = errno
                self.gso = False
                self._set_nocheck(s, True)
            self._send_all(self.socks[s], &self.smsgs[self.gfirst[done]], self.gcount[done])
            done += 1

    cdef void _set_nocheck(self, int s, bint on) noexcept nogil:
        # IPv4 only: zero UDP checksums (RFC 7348's SHOULD) unless a GSO send needs them.
        cdef int value = on
        if self.ipv4 and self.nocheck[s] != on:
            if setsockopt(self.socks[s], SOL_SOCKET, SO_NO_CHECK, &value, sizeof(int)) == 0:
                self.nocheck[s] = on

    cdef void _send_all(self, int fd, mmsghdr *msgs, uint32_t n) noexcept nogil:
        cdef uint32_t done = 0, k
        cdef int sent, e
        while done < n:
            sent = sendmmsg(fd, msgs + done, n - done, MSG_DONTWAIT)
            if sent > 0:
                for k in range(done, done + <uint32_t>sent):
                    self.counters[VX_TX_BYTES] += msgs[k].msg_len
                self.counters[VX_TX_DATAGRAMS] += <uint32_t>sent
                done += <uint32_t>sent
                continue
            e = errno
            if e == EINTR:
                continue
            self.counters[VX_LAST_ERRNO] = e
            if e == EAGAIN:
                self.counters[VX_DROP_TX_FULL] += n - done
                return
            if e == EMSGSIZE:
                self.counters[VX_DROP_TOO_BIG] += 1
            else:
                self.counters[VX_DROP_TX_ERROR] += 1
            done += 1       # this datagram is refused; the next may go

    def __repr__(self):
        state = "closed" if self.fd < 0 else f"{self.nvteps} VTEP(s), {self.nsocks} socket(s)"
        return f"<VxlanIO VNI {self.vni}: {state}>"


def _local_port(int fd):
    sock = socket.socket(fileno=fd)
    try:
        return sock.getsockname()[1]
    finally:
        sock.detach()


cdef uint64_t _parse_mac(str text) except? 0:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(part) == 2 for part in parts):
        raise ValueError(f"invalid MAC address {text!r} (expected six hex pairs like "
                         "02:00:00:00:00:01)")
    try:
        return int("".join(parts), 16)
    except ValueError:
        raise ValueError(f"invalid MAC address {text!r}") from None


def _format_mac(uint64_t mac):
    return ":".join(f"{(mac >> (40 - 8 * k)) & 0xFF:02x}" for k in range(6))
