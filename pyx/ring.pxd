# tapengine._ring: the packet ring, and its C-level API for other Cython code.
#
# One page-aligned slab (anonymous mmap: zero, and untouched until used) of ``nslots`` slots (a
# power of two) of ``stride`` bytes each, and per slot a uint32 length, a uint16 offset and a
# 28-byte peer address. ``head`` and ``tail`` run freely and wrap at 2**32 (uint32 arithmetic, in
# Python as in C); they are masked on use: slots [head, tail) hold packets, [tail, head + nslots)
# are free.
#
# Slot layout (ring v2, /tmp/plan/CONTRACT.md section 1):
#
#   0 .. FRAME_OFFSET - 10          headroom (HEADROOM = 70 bytes: VXLAN over IPv6 fits)
#   FRAME_OFFSET - 10 .. FRAME_OFFSET   the frame's virtio-net header, directly in front of it
#   FRAME_OFFSET ..                 the frame: up to slot_size bytes, and one spare byte
#
# ``stride`` = roundup(FRAME_OFFSET + slot_size + 1, 64). The frame of slot i starts at
# ``offs[i]``: every receive sets it to FRAME_OFFSET (and the peer's family to AF_UNSPEC, or the
# datagram's source on a UDP socket); a stage may prepend a header without a copy
# (``off -= h; len += h``) or strip one (``off += h; len -= h``). The virtio-net header is always
# the 10 bytes in front of the frame, so a tun/tap queue with IFF_VNET_HDR is read and written as
# one buffer (``ring_hdr(ring, i)``, ``len + 10`` bytes).
#
# The safety boundary. A slot's length and offset are trusted only within the slot:
# - every receive (tapengine._batchio, tapengine._uring) reads up to ``slot_size + 1`` frame bytes
#   at FRAME_OFFSET (``stride`` always has that spare byte), so a frame longer than the slot is
#   seen, dropped and counted in ``truncated``, never cut and never handed on;
# - ``lengths`` and ``offsets`` are writable from Python (numpy views), so they are checked where
#   they enter C. The invariant (ring_slot_ok) is
#       VNET_HDR_LEN <= off,  off + len <= FRAME_OFFSET + slot_size,  len <= slot_size
#   so the frame and the header in front of it lie inside the slot. The Python entry points
#   (send_batch, segment_batch, Sink.consume, ...) check the batch once per call with
#   ring_check_lengths() and raise ValueError before anything moves; the C loops (ring_send,
#   uring_send, the UDP send, gso_segment_batch, sink_consume) check each slot they load with
#   ring_slot_ok() anyway and refuse the packet (EMSGSIZE, a drop, a stop: each says which), so
#   C callers cannot make them read or write outside the slab either. A C caller that takes
#   lengths from Python code (a stage, a hook) checks them with ring_check_lengths() or
#   ring_lengths_ok() to report them; the loops' guard only keeps memory safe.
# - code that writes a new frame into a slot (a generator, segmentation) takes its pointer from
#   ring_fresh(), which puts the offset back to FRAME_OFFSET and clears the peer.
#
# ``truncated`` (uint64, read-only from Python, incremented by the receive loops) counts the
# frames dropped on receive because they did not fit a slot; it is never reset (not by clear()
# nor resize()): read it before and after a batch for a per-batch or per-port count.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from tapengine.includes.consts cimport VNET_HDR_LEN
from tapengine.includes.system cimport AF_UNSPEC, sockaddr, sockaddr_in, sockaddr_in6


cpdef enum:                     # also Python constants of tapengine._ring
    FRAME_OFFSET = 80           # where a received frame starts in its slot
    HEADROOM = 70               # FRAME_OFFSET - VNET_HDR_LEN: room to prepend without a copy

cdef enum:
    PEER_SIZE = 28              # sizeof(te_sockaddr)


# A slot's peer: the address a datagram came from or goes to. ``sa.sa_family`` AF_UNSPEC (0):
# no address (a connected socket sends to its peer).
cdef union te_sockaddr:
    sockaddr sa
    sockaddr_in in4
    sockaddr_in6 in6


cdef class PacketRing:
    cdef uint8_t *slab          # nslots * stride bytes, page aligned
    cdef te_sockaddr *peers     # nslots peers (one allocation with lens and offs)
    cdef uint32_t *lens         # nslots lengths
    cdef uint16_t *offs         # nslots frame offsets in their slot
    cdef readonly uint32_t nslots
    cdef readonly uint32_t slot_size
    cdef readonly uint32_t stride   # >= FRAME_OFFSET + slot_size + 1, a multiple of 64
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
cdef inline uint8_t *ring_slot(PacketRing ring, uint32_t i) noexcept nogil:
    return ring.slab + <size_t>(i & ring.mask) * ring.stride

cdef inline uint16_t *ring_off(PacketRing ring, uint32_t i) noexcept nogil:
    return ring.offs + (i & ring.mask)

cdef inline uint8_t *ring_frame(PacketRing ring, uint32_t i) noexcept nogil:
    return ring_slot(ring, i) + ring.offs[i & ring.mask]

cdef inline uint8_t *ring_hdr(PacketRing ring, uint32_t i) noexcept nogil:
    return ring_frame(ring, i) - VNET_HDR_LEN

cdef inline uint32_t *ring_len(PacketRing ring, uint32_t i) noexcept nogil:
    return ring.lens + (i & ring.mask)

cdef inline te_sockaddr *ring_peer(PacketRing ring, uint32_t i) noexcept nogil:
    return ring.peers + (i & ring.mask)

# The frame pointer of slot ``i`` made ready for a new frame: offset FRAME_OFFSET, no peer.
cdef inline uint8_t *ring_fresh(PacketRing ring, uint32_t i) noexcept nogil:
    ring.offs[i & ring.mask] = FRAME_OFFSET
    ring.peers[i & ring.mask].sa.sa_family = AF_UNSPEC
    return ring_slot(ring, i) + FRAME_OFFSET

# True when slot ``i``'s offset and length keep the frame and its header inside the slot (the
# safety invariant above).
cdef inline bint ring_slot_ok(PacketRing ring, uint32_t i) noexcept nogil:
    cdef uint32_t off = ring.offs[i & ring.mask], length = ring.lens[i & ring.mask]
    return (off >= VNET_HDR_LEN and length <= ring.slot_size
            and off + length <= FRAME_OFFSET + ring.slot_size)

cdef inline uint32_t ring_pending(PacketRing ring) noexcept nogil:
    return ring.tail - ring.head

cdef inline uint32_t ring_free(PacketRing ring) noexcept nogil:
    return ring.nslots - (ring.tail - ring.head)

# Returns the offset k (0 .. count - 1) of the first slot of [first, first + count) that breaks
# the safety invariant (ring_slot_ok), or ``count`` when every slot keeps it.
cdef inline uint32_t ring_lengths_ok(PacketRing ring, uint32_t first,
                                     uint32_t count) noexcept nogil:
    cdef uint32_t k
    for k in range(count):
        if not ring_slot_ok(ring, first + k):
            return k
    return count

# Returns 0 when every slot of [first, first + count) keeps the safety invariant; raises
# ValueError naming the first slot (free-running index), its offset and length that do not.
# Needs the GIL.
cdef int ring_check_lengths(PacketRing ring, uint32_t first, uint32_t count) except -1

# Returns 0 when every peer of [first, first + count) is of family 0 (none), AF_INET or
# AF_INET6 (what a UDP send takes); raises ValueError naming the first slot that is not.
cdef int ring_check_peers(PacketRing ring, uint32_t first, uint32_t count) except -1

# Returns ``index`` modulo 2**32, as the C loops' uint32 arithmetic wraps it: any Python int
# (negative, past 2**32, a numpy integer); raises TypeError for anything else. The one conversion
# of a ring index coming from Python.
cdef uint32_t ring_index(object index) except? 0
