# tapengine._batchio: batched reads and writes between a tun/tap fd and a PacketRing, and the one
# dispatch between the I/O backends.
#
# C-level API: every function here returns the number of packets moved (>= 0) and stores 0 or the
# errno that stopped the batch in *err. EINTR is retried; EAGAIN ends the batch with *err == 0.
# They run without the GIL and never allocate.
#
# Lengths (see tapengine._ring's safety boundary): a receive drops a frame longer than the slot and
# counts it in ring.truncated (such a frame counts against the budget); a send stops at a slot
# whose length exceeds slot_size with *err == EMSGSIZE, never reading past the slot.
#
# ring_recv/ring_send are the read()/write() loop (one buffer per packet: the virtio-net header
# sits in front of the frame). udp_recv/udp_send are the recvmmsg()/sendmmsg() loop of a UDP
# socket (same contract; each slot's peer address in ring.peers; a slot whose length, offset or
# peer family is invalid stops the send with EMSGSIZE or EAFNOSUPPORT).
#
# BatchIO is a backend: its recv/send keep that contract; ReadvIO (here) is the read/write
# loop, tapengine._uring.UringIO submits a batch through io_uring. ring_recv_via/ring_send_via
# are the dispatch the forwarder, the generator, the sink and recv_batch/send_batch all use:
# ``io`` None is the read/write loop.

from libc.stdint cimport uint32_t

from tapengine._ring cimport PacketRing


cdef enum:
    UDP_CHUNK = 64          # datagrams per recvmmsg()/sendmmsg() call (arrays on the stack)


cdef uint32_t ring_recv(int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                        int *err) noexcept nogil
cdef uint32_t ring_send(int fd, PacketRing ring, uint32_t first, uint32_t count, bint vnet_hdr,
                        int *err) noexcept nogil
cdef uint32_t udp_recv(int fd, PacketRing ring, uint32_t budget, int *err) noexcept nogil
cdef uint32_t udp_send(int fd, PacketRing ring, uint32_t first, uint32_t count,
                       int *err) noexcept nogil
# udp_socket_family: AF_INET or AF_INET6 when fd is a UDP socket of that family, else 0.
cdef int udp_socket_family(int fd) noexcept nogil


cdef class BatchIO:
    # C loops (a Forwarder, a batch, a generator or sink) using it now: it cannot be closed then.
    cdef Py_ssize_t _users
    # recv: reads up to ``budget`` packets into [ring.tail, ...) and advances tail, as ring_recv.
    cdef uint32_t recv(self, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                       int *err) noexcept nogil
    # send: writes ``count`` packets from slot ``first`` on (head untouched), as ring_send.
    cdef uint32_t send(self, int fd, PacketRing ring, uint32_t first, uint32_t count,
                       bint vnet_hdr, int *err) noexcept nogil
    # check: returns 0 when the calling thread may move packets through it now, else raises.
    cdef int check(self) except -1


cdef class ReadvIO(BatchIO):
    pass


# A port that is not a tun/tap fd (/tmp/plan/CONTRACT.md section 2). recv/send keep the contract
# of ring_recv/ring_send: packets moved, *err = 0 or the errno that stopped the batch (EAGAIN ->
# 0); no allocation, no GIL. The forwarder waits on ``fd`` (readable: something to recv) and
# calls them instead of ring_recv_via/ring_send_via (Forwarder.add_port(..., port_io=...)).
# A subclass sets ``fd`` (closed by close() and on deallocation unless it sets it back to -1) and
# ``l2`` in its constructor.
cdef class PortIO:
    cdef readonly int fd            # -1 once closed
    cdef readonly bint l2           # carries Ethernet frames (True) or anything (False)
    cdef Py_ssize_t _users          # C loops using it now (a Forwarder, a batch): no close()
    cdef uint32_t recv(self, PacketRing ring, uint32_t budget, int *err) noexcept nogil
    cdef uint32_t send(self, PacketRing ring, uint32_t first, uint32_t count,
                       int *err) noexcept nogil
    # check_send: 0 when the slots may be sent as they are (lengths, offsets, peers), else raises
    # ValueError; called with the GIL before a send from Python.
    cdef int check_send(self, PacketRing ring, uint32_t first, uint32_t count) except -1
    cdef void _close_fd(self) noexcept


cdef class UdpPortIO(PortIO):
    cdef readonly int family        # AF_INET or AF_INET6


# A C loop about to run without the GIL on ``ring`` (and ``io``) counts itself a user of both,
# so neither can be closed or resized under it; use_end() when it returns. GIL held.
cdef inline void use_begin(PacketRing ring, BatchIO io) noexcept:
    ring._users += 1
    if io is not None:
        io._users += 1

cdef inline void use_end(PacketRing ring, BatchIO io) noexcept:
    ring._users -= 1
    if io is not None:
        io._users -= 1


cdef inline uint32_t ring_recv_via(BatchIO io, int fd, PacketRing ring, uint32_t budget,
                                   bint vnet_hdr, int *err) noexcept nogil:
    # Returns what ring_recv returns, read through ``io`` (None: readv()).
    if io is None:
        return ring_recv(fd, ring, budget, vnet_hdr, err)
    return io.recv(fd, ring, budget, vnet_hdr, err)


cdef inline uint32_t ring_send_via(BatchIO io, int fd, PacketRing ring, uint32_t first,
                                   uint32_t count, bint vnet_hdr, int *err) noexcept nogil:
    # Returns what ring_send returns, written through ``io`` (None: writev()).
    if io is None:
        return ring_send(fd, ring, first, count, vnet_hdr, err)
    return io.send(fd, ring, first, count, vnet_hdr, err)
