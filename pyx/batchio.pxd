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
# ring_recv/ring_send are the readv()/writev() loop. BatchIO is a backend: its recv/send keep that
# contract; ReadvIO (here) is the readv/writev loop, tapengine._uring.UringIO submits a batch
# through io_uring. ring_recv_via/ring_send_via are the dispatch the forwarder, the generator, the
# sink and recv_batch/send_batch all use: ``io`` None is the readv/writev loop.

from libc.stdint cimport uint32_t

from tapengine._ring cimport PacketRing


cdef uint32_t ring_recv(int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                        int *err) noexcept nogil
cdef uint32_t ring_send(int fd, PacketRing ring, uint32_t first, uint32_t count, bint vnet_hdr,
                        int *err) noexcept nogil


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
