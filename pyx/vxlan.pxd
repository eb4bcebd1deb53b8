# tapengine._vxlan: a VXLAN tunnel endpoint (RFC 7348) as a port of the forwarder.
#
# VxlanIO is a PortIO (pyx/batchio.pxd): its recv() takes a batch of datagrams from the underlay
# socket with one recvmmsg(), checks each one, learns "inner source MAC -> VTEP" and hands the inner
# Ethernet frames on; its send() looks up each frame's destination MAC, prepends the 8-byte header
# (a second iovec, so the slot is never written: a flooded frame is read by other ports too) and
# sends with sendmmsg() to that VTEP, or to every --remote (head-end replication), from one socket
# of a pool chosen by a hash of the inner flow (so the UDP source port spreads flows).
#
# Every address the engine can send to is configured (``vteps``); the table maps MACs to an index
# into it, so nothing received can make it send anywhere else.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from tapengine._batchio cimport PortIO
from tapengine._ring cimport PacketRing, te_sockaddr
from tapengine.includes.system cimport iovec, mmsghdr, pthread_mutex_t


cdef enum:
    VXLAN_HLEN = 8
    VXLAN_FLAG_I = 0x08         # first byte of the header: the VNI is valid
    MAX_VTEPS = 256             # remotes and --fdb VTEPs together
    MAX_SOCKETS = 64            # the sending pool
    RECV_BATCH = 256            # most datagrams per recvmmsg()
    SEND_QUEUE = 1024           # datagrams queued before a flush (a batch times its replication)
    VTEP_WAYS = 4               # the VTEP table is set-associative, like the switch's MAC table
    GSO_MAX_SEGS = 64           # UDP_MAX_SEGMENTS of older kernels
    GSO_MAX_BYTES = 65000       # a GSO send's payload stays below 64 KiB with its headers
    CMSG_ROOM = 24              # CMSG_SPACE(sizeof(uint16_t)): one UDP_SEGMENT per GSO send

# Columns of VxlanIO.counters (COUNTER_NAMES in Python). Drops of received datagrams first.
cdef enum:                      # VxCounter
    VX_RX_DATAGRAMS             # datagrams read from the underlay (valid or not)
    VX_RX_FRAMES                # inner frames handed on
    VX_TX_FRAMES                # frames given to send()
    VX_TX_DATAGRAMS             # datagrams the kernel took (a flooded frame: one per remote)
    VX_TX_BYTES                 # their UDP payload bytes (header included)
    VX_FLOODED                  # frames replicated to every remote (BUM or unknown unicast)
    VX_LEARNED                  # MACs learned (new)
    VX_MOVED                    # MACs that moved from one VTEP to another
    VX_DROP_UNKNOWN_VTEP        # from an address that is neither a remote nor an --fdb VTEP
    VX_DROP_SHORT_HEADER        # shorter than the 8-byte header
    VX_DROP_NO_VNI_FLAG         # the I flag is clear
    VX_DROP_WRONG_VNI           # another VNI
    VX_DROP_RESERVED            # a reserved bit set (the kernel drops these too)
    VX_DROP_SHORT_FRAME         # inner frame shorter than an Ethernet header
    VX_DROP_TRUNCATED           # inner frame longer than a slot
    VX_DROP_NO_REMOTE           # send: a frame to flood and no --remote to flood it to
    VX_DROP_BAD_FRAME           # send: a slot out of the ring's invariant, or shorter than 14
    VX_DROP_TX_FULL             # send: the socket buffer was full (EAGAIN)
    VX_DROP_TOO_BIG             # send: larger than the underlay path MTU (EMSGSIZE, DF set)
    VX_DROP_TX_ERROR            # send: any other error
    VX_GSO_SENDS                # sends that carried several datagrams (UDP GSO)
    VX_SUPERFRAMES              # TCP superframes built from received segments (coalescing)
    VX_COALESCED                # segments that went into them
    VX_GSO_FALLBACKS            # GSO sends the kernel refused: sent one by one, GSO off after
    VX_LAST_ERRNO               # errno of the last failed send
    VX_N_COUNTERS


cdef struct VtepEntry:
    uint64_t key                # MAC | valid bit; 0 = empty
    uint64_t seen_ns            # CLOCK_MONOTONIC_COARSE when last seen (static: never ages)
    int32_t vtep                # index into VxlanIO.vteps
    int32_t is_static


cdef struct Pending:            # one datagram waiting for the flush
    uint32_t slot               # free-running ring index
    uint16_t vtep
    uint16_t sock


cdef class VxlanIO(PortIO):
    cdef uint8_t header[VXLAN_HLEN]     # the same for every datagram: I flag, VNI
    cdef readonly uint32_t vni
    cdef te_sockaddr vteps[MAX_VTEPS]   # remotes first (flood targets), then --fdb-only VTEPs
    cdef uint32_t vtep_len              # sizeof(sockaddr_in) or sizeof(sockaddr_in6)
    cdef readonly int nvteps
    cdef readonly int nremotes
    cdef int socks[MAX_SOCKETS]
    cdef readonly int nsocks
    cdef VtepEntry *table
    cdef uint32_t nbuckets
    cdef uint32_t shift
    cdef uint64_t ageing_ns
    cdef pthread_mutex_t lock           # held for the learning/lookup pass of one batch
    cdef object _counters               # numpy uint64[VX_N_COUNTERS], written by the loop
    cdef uint64_t *counters
    cdef mmsghdr *rmsgs                 # RECV_BATCH
    cdef iovec *riov
    cdef mmsghdr *smsgs                 # SEND_QUEUE
    cdef iovec *siov                    # 2 * SEND_QUEUE: header, frame
    cdef Pending *pend                  # SEND_QUEUE
    cdef uint32_t npend
    cdef int32_t target[RECV_BATCH]     # send: VTEP per frame of a chunk, -1 = flood
    cdef mmsghdr *gmsgs                 # SEND_QUEUE: one socket's datagrams, GSO runs merged
    cdef uint32_t *gcount               # SEND_QUEUE: datagrams in each of gmsgs
    cdef uint32_t *gfirst               # SEND_QUEUE: index of its first datagram in smsgs
    cdef uint8_t *cmsgs                 # SEND_QUEUE * CMSG_ROOM
    cdef readonly bint gso              # UDP GSO in use (probed by tapengine.vxlan)
    cdef bint ipv4
    cdef bint nocheck[MAX_SOCKETS]      # IPv4: socket sends with checksum zero right now
    # TCP coalescing toward taps that take superframes (set by tapengine.vxlan): the superframe
    # being built in one output slot of a receive batch, and what a segment must match to join.
    cdef public bint coalesce
    cdef bint co_open
    cdef uint32_t co_slot                # free-running ring index of the superframe
    cdef uint32_t co_len                 # its length so far
    cdef uint32_t co_hlen                # Ethernet + IP + TCP header bytes
    cdef uint32_t co_l4                  # offset of the TCP header
    cdef uint32_t co_mss                 # payload bytes of its first segment (the gso_size)
    cdef uint32_t co_next_seq
    cdef uint32_t co_segs
    cdef bint co_v6

    cdef int _dup_fd(self, int fd) except -1
    # The index of the configured VTEP ``peer`` came from (the port is not compared), or -1.
    cdef int _vtep_of(self, const te_sockaddr *peer) noexcept nogil
    cdef VtepEntry *_bucket_of(self, uint64_t mac) noexcept nogil
    # learn/lookup expect ``lock`` held. learn: nothing to report (counted).
    cdef void _learn(self, uint64_t mac, int32_t vtep, uint64_t now) noexcept nogil
    cdef int32_t _lookup(self, uint64_t mac, uint64_t now) noexcept nogil
    # Queue one datagram (flushing first when the queue is full).
    cdef void _queue(self, PacketRing ring, uint32_t slot, int vtep, int sock) noexcept nogil
    # Send every queued datagram, one sendmmsg() run per socket; outcomes land in counters.
    cdef void _flush(self, PacketRing ring) noexcept nogil
    cdef void _send_all(self, int fd, mmsghdr *msgs, uint32_t n) noexcept nogil
    # One socket's datagrams [first, first + n) of smsgs, runs to one VTEP of one size as GSO.
    cdef void _send_gso(self, int s, uint32_t first, uint32_t n) noexcept nogil
    cdef void _set_nocheck(self, int s, bint on) noexcept nogil
    # Coalescing: _tcp_segment returns the TCP header offset of a frame that may be part of a
    # superframe (IPv4 without options or IPv6 without extension headers, TCP with payload, only
    # ACK/PSH set, checksum correct), or 0. _open starts a superframe at ring slot ``slot``;
    # _merge appends ``frame`` to it and returns True, or returns False (nothing changed);
    # _close writes the superframe's headers (IP lengths, checksums, the virtio-net header).
    cdef uint32_t _tcp_segment(self, const uint8_t *frame, uint32_t length) noexcept nogil
    cdef void _open(self, PacketRing ring, uint32_t slot) noexcept nogil
    cdef bint _merge(self, PacketRing ring, const uint8_t *frame, uint32_t length) noexcept nogil
    cdef void _close(self, PacketRing ring) noexcept nogil
