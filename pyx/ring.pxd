# tapengine._ring: the packet ring, and its C-level API for other Cython code.
#
# One page-aligned slab of ``nslots`` slots (a power of two) of ``stride`` bytes each, a uint32
# length per slot and a 10-byte virtio-net header per slot. ``head`` and ``tail`` run freely and
# wrap at 2**32 (uint32 arithmetic, in Python as in C); they are masked on use: slots
# [head, tail) hold packets, [tail, head + nslots) are free.
#
# The safety boundary. A slot's length is trusted only up to ``slot_size``:
# - every receive (tapengine._batchio, tapengine._uring) reads up to ``slot_size + 1`` bytes into a
#   slot (``stride`` always has that spare byte), so a frame longer than the slot is seen, dropped
#   and counted in ``truncated``, never cut and never handed on;
# - ``lengths`` is writable from Python (a numpy view), so a length is checked where it enters C:
#   the Python entry points (send_batch, segment_batch, Sink.consume, ...) check the batch once
#   per call with ring_check_lengths() and raise ValueError before anything moves; the C loops
#   (ring_send, uring_send, gso_segment_batch, sink_consume) compare each length they load with
#   ``slot_size`` anyway and refuse the packet (EMSGSIZE, a drop, a stop: each says which), so
#   C callers cannot make them read or write outside the slab either. A C caller that takes
#   lengths from Python code (a stage, a hook) checks them with ring_check_lengths() or
#   ring_lengths_ok() to report them; the loops' guard only keeps memory safe.
#
# ``truncated`` (uint64, read-only from Python, incremented by the receive loops) counts the
# frames dropped on receive because they did not fit a slot; it is never reset (not by clear()
# nor resize()): read it before and after a batch for a per-batch or per-port count.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from tapengine.includes.consts cimport VNET_HDR_LEN


cdef class PacketRing:
    cdef uint8_t *slab          # nslots * stride bytes, page aligned
    cdef uint8_t *hdrs          # nslots * VNET_HDR_LEN bytes
    cdef uint32_t *lens         # nslots lengths
    cdef readonly uint32_t nslots
    cdef readonly uint32_t slot_size
    cdef readonly uint32_t stride   # >= slot_size + 1, a multiple of 64
    cdef readonly uint32_t mask
    cdef uint32_t head          # Python: a property that wraps any int modulo 2**32
    cdef uint32_t tail          # likewise
    cdef readonly uint64_t truncated    # frames dropped on receive: longer than slot_size
    cdef Py_ssize_t _exports
    cdef Py_ssize_t _users      # C loops serving from this ring (a Forwarder): no close/resize
    cdef object __weakref__

    cdef int _allocate(self, uint32_t nslots, uint32_t slot_size) except -1
    cdef void _free(self) noexcept
    cdef int _check_open(self) except -1
    cdef int _check_unexported(self, str action) except -1
    cdef int _store(self, uint32_t index, object data, object header) except -1


# Slot accessors for nogil loops; ``i`` is a free-running index, masked here.
cdef inline uint8_t *ring_frame(PacketRing ring, uint32_t i) noexcept nogil:
    return ring.slab + <size_t>(i & ring.mask) * ring.stride

cdef inline uint8_t *ring_hdr(PacketRing ring, uint32_t i) noexcept nogil:
    return ring.hdrs + <size_t>(i & ring.mask) * VNET_HDR_LEN

cdef inline uint32_t *ring_len(PacketRing ring, uint32_t i) noexcept nogil:
    return ring.lens + (i & ring.mask)

cdef inline uint32_t ring_pending(PacketRing ring) noexcept nogil:
    return ring.tail - ring.head

cdef inline uint32_t ring_free(PacketRing ring) noexcept nogil:
    return ring.nslots - (ring.tail - ring.head)

# Returns the offset k (0 .. count - 1) of the first slot of [first, first + count) whose length
# exceeds slot_size, or ``count`` when every length fits its slot.
cdef inline uint32_t ring_lengths_ok(PacketRing ring, uint32_t first,
                                     uint32_t count) noexcept nogil:
    cdef uint32_t k
    for k in range(count):
        if ring.lens[(first + k) & ring.mask] > ring.slot_size:
            return k
    return count

# Returns 0 when every length of slots [first, first + count) fits its slot; raises ValueError
# naming the first slot (free-running index) and length that do not. Needs the GIL.
cdef int ring_check_lengths(PacketRing ring, uint32_t first, uint32_t count) except -1

# Returns ``index`` modulo 2**32, as the C loops' uint32 arithmetic wraps it: any Python int
# (negative, past 2**32, a numpy integer); raises TypeError for anything else. The one conversion
# of a ring index coming from Python.
cdef uint32_t ring_index(object index) except? 0
