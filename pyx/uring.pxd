# tapengine._uring: batched tun/tap I/O through io_uring, and its C-level API for other Cython code.
#
# One UringIO owns one io_uring (its SQ/CQ rings and SQE array mapped once, a result per entry
# allocated once). It belongs to one thread: the first one that submits on it.
# uring_recv/uring_send follow ring_recv/ring_send (tapengine._batchio) exactly: they return the
# number of packets moved (>= 0), store 0 or the errno that stopped the batch in *err, EAGAIN ends
# a batch with *err == 0, packets keep their order and the ring slots stay contiguous.
# Lengths as there too: a frame longer than the slot is dropped and counted in ring.truncated; a
# send stops at a slot whose length exceeds slot_size with *err == EMSGSIZE.

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

from tapengine._batchio cimport BatchIO
from tapengine._ring cimport PacketRing
from tapengine.includes.uring cimport te_cqe, te_sqe


cdef enum:
    HINT_SLOTS = 64         # read-ahead hints, one per fd & (HINT_SLOTS - 1)
    MAX_REGISTERED = 64     # fds, and ring slabs, one UringIO registers (a forwarder's ports)


cdef class UringIO(BatchIO):
    cdef int ring_fd                # -1 once closed
    cdef uint8_t *sq_map
    cdef size_t sq_map_len
    cdef uint8_t *cq_map            # == sq_map with IORING_FEAT_SINGLE_MMAP
    cdef size_t cq_map_len
    cdef te_sqe *sqes
    cdef size_t sqes_len
    cdef uint32_t *sq_head
    cdef uint32_t *sq_tail
    cdef uint32_t *cq_head
    cdef uint32_t *cq_tail
    cdef te_cqe *cqes
    cdef uint32_t sq_mask
    cdef uint32_t cq_mask
    cdef uint32_t local_tail        # our copy of *sq_tail (we are its only writer)
    cdef int32_t *res               # one result per entry of the batch in flight
    cdef uint8_t *spare             # one slot's bytes: reordering a batch after a failed write
    cdef readonly uint32_t entries
    cdef readonly uint32_t setup_flags
    cdef readonly uint32_t features
    cdef bint enabled               # owned: the first thread that submits takes it (and enables it)
    cdef uint64_t owner             # te_thread_id() of the owning thread, 0: none yet (atomic)
    # benchmarks only (bench/uring_ratio.py): True links the writes of a batch (a failed write
    # cancels the rest), as before per-write results made the count exact; False otherwise
    cdef public bint _link_writes
    # True (UringIO(direct_small=True), the engine's workers): a receive on a queue whose last
    # batch was at most one packet, and a send of one packet, use read()/write()
    # (tapengine._batchio) instead of an io_uring_enter; False: every packet through io_uring
    cdef public bint _direct_small
    # Registered for the owning thread (register()): fds (IOSQE_FIXED_FILE: no file lookup per
    # op) and ring slabs (READ_FIXED/WRITE_FIXED: pages pinned once, not per op). The rings are
    # held in use (no close/resize) while registered, so a slab address names its ring.
    cdef int nfiles
    cdef int files[MAX_REGISTERED]
    cdef int nbufs
    cdef uint8_t *bufs[MAX_REGISTERED]
    cdef list _registered
    cdef readonly str register_error   # why the last register() left something out, or ""
    cdef int dead                   # errno that left submissions in an unknown state, else 0
    cdef uint32_t hint[HINT_SLOTS]  # packets the last recv on this fd found
    # counters, for benchmarks and profiles
    cdef readonly uint64_t enters
    cdef readonly uint64_t submitted
    cdef readonly uint64_t empty_reads  # reads that completed with EAGAIN
    cdef readonly uint64_t moved        # packets copied down to close a gap left by EAGAIN
    cdef readonly uint64_t reordered    # packets moved in front of a failed write (unlinked)
    cdef readonly uint64_t fixed_ops    # SQEs on a registered buffer (READ_FIXED/WRITE_FIXED)
    cdef readonly uint64_t direct       # packets moved by read()/write(): batches of one

    cdef int _setup_any(self, uint32_t entries) except -1
    cdef int _setup(self, uint32_t entries, uint32_t flags) except -1
    cdef void _free(self) noexcept
    cdef int _own(self) noexcept nogil
    cdef int _run(self, uint32_t n) noexcept nogil
    # _file_of / _buf_of: the registered index of fd / of ring's slab, or -1 when not registered.
    cdef int _file_of(self, int fd) noexcept nogil
    cdef int _buf_of(self, PacketRing ring) noexcept nogil
    cdef void _unregister(self) noexcept
    # The BatchIO interface: uring_recv/uring_send below, and the closed/owner check.
    cdef uint32_t recv(self, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                       int *err) noexcept nogil
    cdef uint32_t send(self, int fd, PacketRing ring, uint32_t first, uint32_t count,
                       bint vnet_hdr, int *err) noexcept nogil
    cdef int check(self) except -1


cdef uint32_t uring_recv(UringIO io, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                         int *err) noexcept nogil
cdef uint32_t uring_send(UringIO io, int fd, PacketRing ring, uint32_t first, uint32_t count,
                         bint vnet_hdr, int *err) noexcept nogil
