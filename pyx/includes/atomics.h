/* Flags shared between threads (a worker and the thread that stops or watches it), read and
 * written through GCC's __atomic builtins (GCC >= 4.7, Clang): a plain int field stays a plain
 * int in the struct, and every access to it says it is shared. Acquire loads pair with release
 * stores, so what a thread wrote before setting a flag is seen by the thread that sees the flag.
 */
#ifndef TE_ATOMICS_H
#define TE_ATOMICS_H

#include <stdint.h>

static inline int te_atomic_load_int(const int *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void te_atomic_store_int(int *p, int v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline uint64_t te_atomic_load_u64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void te_atomic_store_u64(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* Stores v in *p and returns what *p held, as one sequentially consistent step. */
static inline int te_atomic_exchange_int(int *p, int v)
{
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}

/* A full barrier: a store before it is visible before a load after it (what a "set my flag,
 * then look at yours" handshake between two threads needs; release/acquire alone do not order
 * a store before a later load). */
static inline void te_atomic_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Stores desired in *p if *p == expected; returns 1 then, else 0 (and *p is unchanged). */
static inline int te_atomic_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

#endif
