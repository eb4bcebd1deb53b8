# tapengine._uring: batched tun/tap I/O through io_uring, and its C-level API for other Cython code.
#
# One UringIO owns one io_uring (its SQ/CQ rings and SQE array mapped once, an iovec pair and a
# result per entry allocated once). It belongs to one thread: the first one that submits on it.
# uring_recv/uring_send follow ring_recv/ring_send (tapengine._batchio) exactly: they return the
# number of packets moved (>= 0), store 0 or the errno that stopped the batch in *err, EAGAIN ends
# a batch with *err == 0, packets keep their order and the ring slots stay contiguous.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from tapengine._ring cimport PacketRing
from tapengine.syscall cimport iovec


cdef extern from "uring.h" nogil:
    struct te_sqe:
        uint8_t opcode
        uint8_t flags
        uint16_t ioprio
        int32_t fd
        uint64_t off
        uint64_t addr
        uint32_t len
        uint32_t rw_flags
        uint64_t user_data
        uint16_t buf_index
        uint16_t personality
        int32_t file_index
        uint64_t addr3
        uint64_t pad2

    struct te_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    struct te_sqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array

    struct te_cqring_offsets:
        uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags

    struct te_uring_params:
        uint32_t sq_entries, cq_entries, flags, features
        te_sqring_offsets sq_off
        te_cqring_offsets cq_off

    struct te_probe_op:
        uint8_t op
        uint16_t flags

    struct te_probe:
        uint8_t last_op
        uint8_t ops_len
        te_probe_op ops[64]

    enum:
        TE_PROBE_OPS
        TE_OP_NOP, TE_OP_READV, TE_OP_WRITEV, TE_OP_READ, TE_OP_WRITE
        TE_IOSQE_IO_LINK
        TE_RWF_NOWAIT
        TE_SETUP_R_DISABLED, TE_SETUP_COOP_TASKRUN, TE_SETUP_SINGLE_ISSUER, TE_SETUP_DEFER_TASKRUN
        TE_FEAT_SINGLE_MMAP, TE_FEAT_NODROP
        TE_ENTER_GETEVENTS
        TE_REGISTER_PROBE, TE_REGISTER_ENABLE_RINGS
        TE_IO_URING_OP_SUPPORTED

    unsigned long long TE_OFF_SQ_RING, TE_OFF_CQ_RING, TE_OFF_SQES

    int te_io_uring_setup(uint32_t entries, te_uring_params *p)
    int te_io_uring_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags)
    int te_io_uring_register(int fd, uint32_t opcode, void *arg, uint32_t nr_args)
    uint32_t te_load_acquire(const uint32_t *p)
    void te_store_release(uint32_t *p, uint32_t v)
    uint64_t te_thread_id()


cdef enum:
    HINT_SLOTS = 64         # read-ahead hints, one per fd & (HINT_SLOTS - 1)


cdef class UringIO:
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
    cdef iovec *iovs                # two per entry: virtio-net header, frame
    cdef int32_t *res               # one result per entry of the batch in flight
    cdef readonly uint32_t entries
    cdef readonly uint32_t setup_flags
    cdef readonly uint32_t features
    cdef bint enabled               # owned: the first thread that submits takes it (and enables it)
    cdef uint64_t owner             # te_thread_id() of the owning thread
    cdef public bint link_writes    # (experiments only) False: unlinked writes, inexact on error
    cdef int dead                   # errno that left submissions in an unknown state, else 0
    cdef uint32_t hint[HINT_SLOTS]  # packets the last recv on this fd found
    # counters, for benchmarks and profiles
    cdef readonly uint64_t enters
    cdef readonly uint64_t submitted
    cdef readonly uint64_t empty_reads  # reads that completed with EAGAIN
    cdef readonly uint64_t moved        # packets copied down to close a gap left by EAGAIN

    cdef int _setup_any(self, uint32_t entries) except -1
    cdef int _setup(self, uint32_t entries, uint32_t flags) except -1
    cdef void _free(self) noexcept
    cdef int _own(self) noexcept nogil
    cdef int _run(self, uint32_t n) noexcept nogil


cdef uint32_t uring_recv(UringIO io, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                         int *err) noexcept nogil
cdef uint32_t uring_send(UringIO io, int fd, PacketRing ring, uint32_t first, uint32_t count,
                         bint vnet_hdr, int *err) noexcept nogil
