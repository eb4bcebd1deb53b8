# Atomic loads and stores of the flags threads share (atomics.h, beside this file, shipped with
# it): a forwarder's ``stopping`` and its ports' ``up``, an io_uring's owner.

from libc.stdint cimport uint64_t


cdef extern from "atomics.h" nogil:
    int te_atomic_load_int(const int *p)
    void te_atomic_store_int(int *p, int v)
    uint64_t te_atomic_load_u64(const uint64_t *p)
    void te_atomic_store_u64(uint64_t *p, uint64_t v)
    int te_atomic_exchange_int(int *p, int v)
    void te_atomic_fence()
    # Returns 1 when *p held ``expected`` and now holds ``desired``, else 0.
    int te_atomic_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
