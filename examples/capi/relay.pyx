# cython: language_level=3
"""An external Cython extension built against an *installed* tapengine.

It cimports tapengine's C-level API (the packet ring, the batched reads and writes, the backend
dispatch) exactly as another project would, and moves packets between two fds with it.
"""

from libc.stdint cimport uint32_t

from tapengine._batchio cimport BatchIO, ring_recv, ring_recv_via, ring_send, ring_send_via
from tapengine._ring cimport VNET_HDR_LEN, PacketRing, ring_frame, ring_len, ring_pending
from tapengine._uring cimport UringIO     # its header (uring.h) comes from the wheel as well


def relay(int src, int dst, PacketRing ring not None, uint32_t budget=64):
    """Read up to ``budget`` packets from ``src`` and write them to ``dst`` (readv/writev loop).

    Returns ``(read, written)``. The ring is empty again afterwards (written packets consumed,
    the rest dropped).
    """
    cdef int err = 0
    cdef uint32_t got, put = 0
    ring.clear()
    with nogil:
        got = ring_recv(src, ring, budget, False, &err)
        if err == 0 and got:
            put = ring_send(dst, ring, ring.head, got, False, &err)
    ring.clear()
    if err:
        raise OSError(err, "relay")
    return got, put


def relay_via(BatchIO io, int src, int dst, PacketRing ring not None, uint32_t budget=64):
    """``relay`` through a backend (``tapengine.open_batch_io()``; None: readv/writev)."""
    cdef int err = 0
    cdef uint32_t got, put = 0
    ring.clear()
    with nogil:
        got = ring_recv_via(io, src, ring, budget, False, &err)
        if err == 0 and got:
            put = ring_send_via(io, dst, ring, ring.head, got, False, &err)
    ring.clear()
    if err:
        raise OSError(err, "relay_via")
    return got, put


def send_unchecked(BatchIO io, int dst, PacketRing ring not None, uint32_t first,
                   uint32_t count):
    """Write slots ``[first, first + count)`` straight from C, their lengths not checked first.

    Returns ``(written, errno)``. The C loops never read past a slot: a length over
    ``ring.slot_size`` (set through ``ring.lengths``) stops the batch there with ``EMSGSIZE``.
    """
    cdef int err = 0
    cdef uint32_t put
    with nogil:
        put = ring_send_via(io, dst, ring, first, count, False, &err)
    return put, err


def first_bytes(PacketRing ring not None):
    """The first byte of every pending packet, read straight from the slots."""
    cdef uint32_t i
    cdef list out = []
    for i in range(ring_pending(ring)):
        if ring_len(ring, ring.head + i)[0]:
            out.append(ring_frame(ring, ring.head + i)[0])
    return out


def is_uring(io):
    """True for a ``tapengine.UringIO``."""
    return isinstance(io, UringIO)


VIRTIO_HEADER_BYTES = VNET_HDR_LEN
