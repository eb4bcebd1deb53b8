/* tapengine's own view of the io_uring kernel ABI: just what pyx/uring.pyx uses, declared
 * for Cython in includes/uring.pxd.
 *
 * Written from the kernel's uapi layout (include/uapi/linux/io_uring.h); no liburing. Field names
 * follow the kernel's so the two can be read side by side. Sizes are checked at compile time.
 */
#ifndef TAPENGINE_URING_H
#define TAPENGINE_URING_H

#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup         /* one number on every architecture since 5.1 */
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

/* Submission queue entry: only the fields a read or write fills, unions flattened. */
struct te_sqe {
    uint8_t  opcode;
    uint8_t  flags;          /* TE_IOSQE_* */
    uint16_t ioprio;
    int32_t  fd;
    uint64_t off;            /* file offset; -1 = current position (tun ignores it) */
    uint64_t addr;           /* buffer, or iovec array */
    uint32_t len;            /* bytes, or number of iovecs */
    uint32_t rw_flags;       /* RWF_* */
    uint64_t user_data;      /* comes back in the completion */
    uint16_t buf_index;
    uint16_t personality;
    int32_t  file_index;
    uint64_t addr3;
    uint64_t pad2;
};

struct te_cqe {
    uint64_t user_data;
    int32_t  res;            /* bytes moved, or -errno */
    uint32_t flags;
};

struct te_sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};

struct te_cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};

struct te_uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
    uint32_t resv[3];
    struct te_sqring_offsets sq_off;
    struct te_cqring_offsets cq_off;
};

struct te_probe_op {
    uint8_t  op;
    uint8_t  resv;
    uint16_t flags;          /* TE_IO_URING_OP_SUPPORTED */
    uint32_t resv2;
};

#define TE_PROBE_OPS 64
struct te_probe {
    uint8_t  last_op;
    uint8_t  ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct te_probe_op ops[TE_PROBE_OPS];
};

_Static_assert(sizeof(struct te_sqe) == 64, "io_uring_sqe is 64 bytes");
_Static_assert(sizeof(struct te_cqe) == 16, "io_uring_cqe is 16 bytes");
_Static_assert(sizeof(struct te_uring_params) == 120, "io_uring_params is 120 bytes");
_Static_assert(sizeof(struct te_probe_op) == 8, "io_uring_probe_op is 8 bytes");

/* opcodes */
#define TE_OP_NOP        0
#define TE_OP_READV      1
#define TE_OP_WRITEV     2
#define TE_OP_READ_FIXED 4      /* into a registered buffer: sqe->buf_index, addr inside it */
#define TE_OP_WRITE_FIXED 5
#define TE_OP_READ       22
#define TE_OP_WRITE      23

/* sqe->flags */
#define TE_IOSQE_FIXED_FILE (1U << 0) /* sqe->fd is an index into the registered files */
#define TE_IOSQE_IO_LINK (1U << 2)   /* the next sqe runs only if this one fully succeeds */

/* sqe->rw_flags: fail with -EAGAIN rather than wait (the file needs FMODE_NOWAIT; tun has it) */
#define TE_RWF_NOWAIT    0x00000008

/* io_uring_setup() flags */
#define TE_SETUP_R_DISABLED      (1U << 6)
#define TE_SETUP_COOP_TASKRUN    (1U << 8)
#define TE_SETUP_SINGLE_ISSUER   (1U << 12)
#define TE_SETUP_DEFER_TASKRUN   (1U << 13)

/* params.features */
#define TE_FEAT_SINGLE_MMAP      (1U << 0)
#define TE_FEAT_NODROP           (1U << 1)

/* io_uring_enter() flags */
#define TE_ENTER_GETEVENTS       (1U << 0)

/* io_uring_register() opcodes */
#define TE_REGISTER_BUFFERS      0  /* arg: struct iovec[nr_args]; pins the pages once */
#define TE_UNREGISTER_BUFFERS    1
#define TE_REGISTER_FILES        2  /* arg: int[nr_args]; one file reference held for all ops */
#define TE_UNREGISTER_FILES      3
#define TE_REGISTER_PROBE        8
#define TE_REGISTER_ENABLE_RINGS 12

#define TE_IO_URING_OP_SUPPORTED (1U << 0)

/* mmap offsets */
#define TE_OFF_SQ_RING  0ULL
#define TE_OFF_CQ_RING  0x8000000ULL
#define TE_OFF_SQES     0x10000000ULL

/* The raw system calls: -1 and errno on failure, like libc. */
static inline int te_io_uring_setup(uint32_t entries, struct te_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static inline int te_io_uring_enter(int fd, uint32_t to_submit, uint32_t min_complete,
                                    uint32_t flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static inline int te_io_uring_register(int fd, uint32_t opcode, void *arg, uint32_t nr_args)
{
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
}

/* Ring indices shared with the kernel: acquire what it published, release what we publish. */
static inline uint32_t te_load_acquire(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void te_store_release(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* A number for the calling thread, never reused within the process (unlike pthread_t or a tid,
 * which a new thread can inherit from a dead one): the owner check of a ring. */
static inline uint64_t te_thread_id(void)
{
    static uint64_t next = 0;
    static __thread uint64_t mine = 0;
    if (mine == 0)
        mine = __atomic_add_fetch(&next, 1, __ATOMIC_RELAXED);
    return mine;
}

#endif
