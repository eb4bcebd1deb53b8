# cython: language_level=3, embedsignature=True
"""Batched I/O on tun/tap fds.

A tun/tap fd carries exactly one packet per read() or write() (the fd is not a socket, so there
is no recvmmsg). A batch is therefore a loop of readv()/writev() calls run in C without the GIL:
iovec[0] is the slot's virtio-net header when the fd has IFF_VNET_HDR, iovec[1] the frame slot,
so each packet is copied once, by the kernel, straight into or out of the ring.

A read asks for ``slot_size + 1`` frame bytes (the slot's stride has the spare byte): a frame that
does not fit its slot comes back longer than ``slot_size`` (a tun fd returns the whole length, a
datagram socket the one byte more), and is dropped and counted in ``ring.truncated`` instead of
being handed on cut. A write refuses a length over ``slot_size`` (written through the ``lengths``
view): ``send_batch`` raises ``ValueError`` before writing anything, ``ring_send`` stops there with
``EMSGSIZE``.

A backend (``BatchIO``) chooses how a batch moves: ``ReadvIO`` is this readv/writev loop,
``tapengine.UringIO`` submits the same reads and writes through io_uring, one ``io_uring_enter``
per batch, with exactly the same results (see ``pyx/uring.pyx``). ``tapengine.open_batch_io()``
hands out the best one available.
"""

cimport cython
from libc.errno cimport EINTR, EMSGSIZE, ENOSYS, EPROTO, errno
from libc.stdint cimport uint32_t

from tapengine._ring cimport (
    PacketRing, ring_check_lengths, ring_frame, ring_free, ring_hdr, ring_index, ring_len,
)
from tapengine.includes.consts cimport VNET_HDR_LEN
from tapengine.includes.system cimport iovec, read, readv, write, writev
from tapengine.syscall cimport fd_of, raise_errno, would_block


@cython.boundscheck(False)
cdef uint32_t ring_recv(int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                        int *err) noexcept nogil:
    cdef iovec iov[2]
    cdef uint32_t n = 0, dropped = 0, index
    cdef ssize_t got
    cdef int iovcnt = 2 if vnet_hdr else 1
    cdef size_t hdr_len = VNET_HDR_LEN if vnet_hdr else 0
    cdef uint32_t room = ring_free(ring)
    err[0] = 0
    if budget > room:
        budget = room
    while n + dropped < budget:     # a frame dropped as too long counts against the budget
        index = ring.tail + n
        iov[0].iov_base = ring_hdr(ring, index)
        iov[0].iov_len = VNET_HDR_LEN
        iov[iovcnt - 1].iov_base = ring_frame(ring, index)
        iov[iovcnt - 1].iov_len = ring.slot_size + 1    # the stride's spare byte: see above
        # one iovec: plain read() is the cheaper syscall
        got = readv(fd, iov, 2) if vnet_hdr else read(fd, iov[0].iov_base, iov[0].iov_len)
        if got < 0:
            if errno == EINTR:
                continue
            if not would_block(errno):
                err[0] = errno
            break
        if <size_t>got < hdr_len:
            err[0] = EPROTO     # a vnet fd always prepends a whole header
            break
        if <size_t>got - hdr_len > ring.slot_size:
            ring.truncated += 1     # too long for the slot: dropped, the slot is read into again
            dropped += 1
            continue
        ring_len(ring, index)[0] = <uint32_t>(got - hdr_len)
        n += 1
    ring.tail += n
    return n


@cython.boundscheck(False)
cdef uint32_t ring_send(int fd, PacketRing ring, uint32_t first, uint32_t count, bint vnet_hdr,
                        int *err) noexcept nogil:
    cdef iovec iov[2]
    cdef uint32_t n = 0, index, length
    cdef ssize_t put
    cdef int iovcnt = 2 if vnet_hdr else 1
    err[0] = 0
    while n < count:
        index = first + n
        length = ring_len(ring, index)[0]
        if length > ring.slot_size:
            err[0] = EMSGSIZE   # a length past the slot (see ring.pxd): refused, never read
            break
        iov[0].iov_base = ring_hdr(ring, index)
        iov[0].iov_len = VNET_HDR_LEN
        iov[iovcnt - 1].iov_base = ring_frame(ring, index)
        iov[iovcnt - 1].iov_len = length
        put = writev(fd, iov, 2) if vnet_hdr else write(fd, iov[0].iov_base, iov[0].iov_len)
        if put < 0:
            if errno == EINTR:
                continue
            if not would_block(errno):
                err[0] = errno
            break
        n += 1
    return n


cdef class BatchIO:
    """How batches move between a fd and a ring: the interface of ``ReadvIO`` and ``UringIO``.

    ``recv_batch``/``send_batch`` here are ``tapengine.recv_batch``/``send_batch`` with
    ``io=self``; Cython code calls the C methods ``recv``/``send`` (see ``pyx/batchio.pxd``).
    """

    def __cinit__(self, *args, **kwargs):
        if type(self) is BatchIO:
            raise TypeError("BatchIO is an interface: use ReadvIO, UringIO or open_batch_io()")

    cdef uint32_t recv(self, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                       int *err) noexcept nogil:
        # Returns 0 with ENOSYS: every backend overrides it.
        err[0] = ENOSYS
        return 0

    cdef uint32_t send(self, int fd, PacketRing ring, uint32_t first, uint32_t count,
                       bint vnet_hdr, int *err) noexcept nogil:
        # Returns 0 with ENOSYS: every backend overrides it.
        err[0] = ENOSYS
        return 0

    cdef int check(self) except -1:
        # Returns 0: a backend without state can be used from any thread at any time.
        return 0

    def recv_batch(self, fd, PacketRing ring not None, budget=64, *, bint vnet_hdr=False):
        """``tapengine.recv_batch(fd, ring, budget, vnet_hdr=..., io=self)``: same contract."""
        return recv_batch(fd, ring, budget, vnet_hdr=vnet_hdr, io=self)

    def send_batch(self, fd, PacketRing ring not None, first, count, *, bint vnet_hdr=False):
        """``tapengine.send_batch(fd, ring, first, count, vnet_hdr=..., io=self)``: same
        contract; no packet after a failing one is written."""
        return send_batch(fd, ring, first, count, vnet_hdr=vnet_hdr, io=self)

    def close(self):
        """Release what the backend holds (nothing for readv/writev); closing twice is a no-op."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


cdef class ReadvIO(BatchIO):
    """The readv/writev backend: one syscall per packet, no state, usable from any thread."""

    @property
    def backend(self):
        """``"readv"``: which backend moves the packets."""
        return "readv"

    cdef uint32_t recv(self, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                       int *err) noexcept nogil:
        # Returns what ring_recv returns.
        return ring_recv(fd, ring, budget, vnet_hdr, err)

    cdef uint32_t send(self, int fd, PacketRing ring, uint32_t first, uint32_t count,
                       bint vnet_hdr, int *err) noexcept nogil:
        # Returns what ring_send returns.
        return ring_send(fd, ring, first, count, vnet_hdr, err)


def recv_batch(fd, PacketRing ring not None, budget=64, *, bint vnet_hdr=False, BatchIO io=None):
    """Read up to ``budget`` packets from a non-blocking tun/tap fd into the ring's free slots.

    Packets land at ``ring.tail`` onwards and ``tail`` advances by the number returned. Stops at
    ``EAGAIN`` (nothing more now), at the budget or when the ring is full; a frame longer than
    ``ring.slot_size`` is dropped, counted in ``ring.truncated`` and counts against the budget
    (so at most ``budget`` frames are read per call). Any other error raises
    the matching ``OSError`` subclass whose ``completed`` attribute says how many packets were
    read (and kept in the ring) before it. ``io``: a backend (``open_batch_io()``; a ``UringIO``
    belongs to one thread), or None for readv().
    """
    cdef int cfd = fd_of(fd)
    ring._check_open()
    if budget < 0:
        raise ValueError(f"budget must be >= 0, not {budget}")
    cdef uint32_t cbudget = min(budget, ring.nslots)
    cdef int err
    cdef uint32_t n
    if io is not None:
        io.check()
    use_begin(ring, io)
    try:
        with nogil:
            n = ring_recv_via(io, cfd, ring, cbudget, vnet_hdr, &err)
    finally:
        use_end(ring, io)
    if err:
        raise_errno(err, f"reading a batch from fd {cfd}", n)
    return n


def send_batch(fd, PacketRing ring not None, first, count, *, bint vnet_hdr=False,
               BatchIO io=None):
    """Write ``count`` packets from slots ``first`` onwards (free-running, masked) to a tun/tap fd.

    Returns the number written; fewer than ``count`` means the fd would block (``EAGAIN``). Any
    other error raises the matching ``OSError`` subclass whose ``completed`` attribute says how many
    packets were written before it. ``head`` is not moved: call ``ring.consume()`` when done.
    ``first`` is any int, kept modulo 2**32. Raises ``ValueError`` before writing anything when a
    length of the batch exceeds ``ring.slot_size``.
    ``io``: a backend (``open_batch_io()``; a ``UringIO`` belongs to one thread), or None for
    writev().
    """
    cdef int cfd = fd_of(fd)
    ring._check_open()
    if count < 0 or count > ring.nslots:
        raise ValueError(f"count must be between 0 and {ring.nslots}, not {count}")
    cdef uint32_t cfirst = ring_index(first), ccount = count
    cdef int err
    cdef uint32_t n
    ring_check_lengths(ring, cfirst, ccount)
    if io is not None:
        io.check()
    use_begin(ring, io)
    try:
        with nogil:
            n = ring_send_via(io, cfd, ring, cfirst, ccount, vnet_hdr, &err)
    finally:
        use_end(ring, io)
    if err:
        raise_errno(err, f"writing a batch to fd {cfd}", n)
    return n
