# tapengine._ring: the packet ring, and its C-level API for other Cython code.
#
# One page-aligned slab of ``nslots`` slots (a power of two) of ``stride`` bytes each, a uint32
# length per slot and a 10-byte virtio-net header per slot. ``head`` and ``tail`` run freely and
# are masked on use: slots [head, tail) hold packets, [tail, head + nslots) are free.

from libc.stdint cimport uint8_t, uint32_t

from tapengine.includes.consts cimport VNET_HDR_LEN


cdef class PacketRing:
    cdef uint8_t *slab          # nslots * stride bytes, page aligned
    cdef uint8_t *hdrs          # nslots * VNET_HDR_LEN bytes
    cdef uint32_t *lens         # nslots lengths
    cdef readonly uint32_t nslots
    cdef readonly uint32_t slot_size
    cdef readonly uint32_t stride
    cdef readonly uint32_t mask
    cdef public uint32_t head
    cdef public uint32_t tail
    cdef Py_ssize_t _exports
    cdef object __weakref__

    cdef int _allocate(self, uint32_t nslots, uint32_t slot_size) except -1
    cdef void _free(self) noexcept
    cdef int _check_open(self) except -1
    cdef int _check_unexported(self, str action) except -1


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
