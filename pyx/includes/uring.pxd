# The io_uring kernel ABI as tapengine uses it: our own header (uring.h, beside this file, shipped
# with it; cythonize adds this directory to the C include path of whoever cimports it).

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


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
        TE_OP_NOP, TE_OP_READV, TE_OP_WRITEV, TE_OP_READ, TE_OP_WRITE, TE_OP_READ_FIXED
        TE_OP_WRITE_FIXED
        TE_IOSQE_FIXED_FILE, TE_IOSQE_IO_LINK
        TE_RWF_NOWAIT
        TE_SETUP_R_DISABLED, TE_SETUP_COOP_TASKRUN, TE_SETUP_SINGLE_ISSUER, TE_SETUP_DEFER_TASKRUN
        TE_FEAT_SINGLE_MMAP, TE_FEAT_NODROP
        TE_ENTER_GETEVENTS
        TE_REGISTER_BUFFERS, TE_UNREGISTER_BUFFERS, TE_REGISTER_FILES, TE_UNREGISTER_FILES
        TE_REGISTER_PROBE, TE_REGISTER_ENABLE_RINGS
        TE_IO_URING_OP_SUPPORTED

    unsigned long long TE_OFF_SQ_RING, TE_OFF_CQ_RING, TE_OFF_SQES

    int te_io_uring_setup(uint32_t entries, te_uring_params *p)
    int te_io_uring_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags)
    int te_io_uring_register(int fd, uint32_t opcode, void *arg, uint32_t nr_args)
    uint32_t te_load_acquire(const uint32_t *p)
    void te_store_release(uint32_t *p, uint32_t v)
    uint64_t te_thread_id()
