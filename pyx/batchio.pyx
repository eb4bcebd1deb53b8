# cython: language_level=3, embedsignature=True
"""Batched I/O on tun/tap fds.

A tun/tap fd carries exactly one packet per read() or write() (the fd is not a socket, so there
is no recvmmsg). A batch is therefore a loop of read()/write() calls run in C without the GIL,
each on one buffer: with IFF_VNET_HDR the slot's virtio-net header sits directly in front of the
frame (``pyx/ring.pxd``), so header and frame are one read or write of ``len + 10`` bytes. Each
packet is copied once, by the kernel, straight into or out of the ring.

A UDP socket (AF_INET or AF_INET6, SOCK_DGRAM; bound, connected or not) is a port too: ``UdpPortIO``
and ``recv_batch``/``send_batch`` (which detect it) move a batch with one recvmmsg()/sendmmsg()
per up to ``UDP_CHUNK`` datagrams, the peer address of each in its slot's ``peers`` entry; a slot
whose peer family is 0 goes to the connected peer.

A read asks for ``slot_size + 1`` frame bytes (the slot's stride has the spare byte): a frame that
does not fit its slot comes back longer than ``slot_size`` (a tun fd returns the whole length, a
datagram socket the one byte more), and is dropped and counted in ``ring.truncated`` instead of
being handed on cut. A write refuses a length over ``slot_size`` (written through the ``lengths``
view): ``send_batch`` raises ``ValueError`` before writing anything, ``ring_send`` stops there with
``EMSGSIZE``.

A backend (``BatchIO``) chooses how a batch moves: ``ReadvIO`` is this read/write loop,
``tapengine.UringIO`` submits the same reads and writes through io_uring, one ``io_uring_enter``
per batch, with exactly the same results (see ``pyx/uring.pyx``). ``tapengine.open_batch_io()``
hands out the best one available.
"""

cimport cython
from libc.errno cimport EAFNOSUPPORT, EINTR, EMSGSIZE, ENOSYS, EPROTO, errno
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy, memmove
from posix.fcntl cimport F_DUPFD_CLOEXEC, fcntl
from posix.unistd cimport close

from tapengine._ring cimport (
    PacketRing, ring_check_lengths, ring_check_peers, ring_fresh, ring_free, ring_frame, ring_hdr,
    ring_index, ring_len, ring_peer, ring_slot_ok, te_sockaddr,
)
from tapengine.includes.consts cimport VNET_HDR_LEN
from tapengine.includes.system cimport (
    AF_INET, AF_INET6, AF_UNSPEC, MSG_DONTWAIT, MSG_TRUNC, SO_DOMAIN, SO_TYPE, SOCK_DGRAM,
    SOL_SOCKET, getsockopt, iovec, mmsghdr, read, recvmmsg, sendmmsg, sockaddr_in, sockaddr_in6,
    socklen_t, write,
)
from tapengine.syscall cimport fd_of, raise_errno, would_block


@cython.boundscheck(False)
cdef uint32_t ring_recv(int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                        int *err) noexcept nogil:
    cdef uint32_t n = 0, dropped = 0, index
    cdef ssize_t got
    cdef size_t hdr_len = VNET_HDR_LEN if vnet_hdr else 0
    cdef uint8_t *buf
    cdef uint32_t room = ring_free(ring)
    err[0] = 0
    if budget > room:
        budget = room
    while n + dropped < budget:     # a frame dropped as too long counts against the budget
        index = ring.tail + n
        # header and frame in one buffer: the header sits right in front of the frame
        buf = ring_fresh(ring, index) - hdr_len
        # the stride's spare byte: see above
        got = read(fd, buf, hdr_len + ring.slot_size + 1)
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
    cdef uint32_t n = 0, index
    cdef ssize_t put
    cdef size_t hdr_len = VNET_HDR_LEN if vnet_hdr else 0
    err[0] = 0
    while n < count:
        index = first + n
        if not ring_slot_ok(ring, index):
            err[0] = EMSGSIZE   # a length or offset past the slot (see ring.pxd): never read
            break
        # header and frame in one buffer (ring_slot_ok: the header is inside the slot)
        put = write(fd, ring_hdr(ring, index) + VNET_HDR_LEN - hdr_len,
                    hdr_len + ring_len(ring, index)[0])
        if put < 0:
            if errno == EINTR:
                continue
            if not would_block(errno):
                err[0] = errno
            break
        n += 1
    return n


cdef inline void _udp_msg(mmsghdr *msg, iovec *iov, void *buf, size_t length, void *name,
                          socklen_t namelen) noexcept nogil:
    # Fills one mmsghdr of a batch: one iovec, a peer address (or none), no control data.
    iov.iov_base = buf
    iov.iov_len = length
    msg.msg_hdr.msg_name = name
    msg.msg_hdr.msg_namelen = namelen
    msg.msg_hdr.msg_iov = iov
    msg.msg_hdr.msg_iovlen = 1
    msg.msg_hdr.msg_control = NULL
    msg.msg_hdr.msg_controllen = 0
    msg.msg_hdr.msg_flags = 0


@cython.boundscheck(False)
cdef uint32_t udp_recv(int fd, PacketRing ring, uint32_t budget, int *err) noexcept nogil:
    cdef mmsghdr msgs[UDP_CHUNK]
    cdef iovec iovs[UDP_CHUNK]
    cdef uint32_t n = 0, dropped = 0, want, k, base, length, index
    cdef int got
    cdef uint32_t room = ring_free(ring)
    err[0] = 0
    if budget > room:
        budget = room
    while n + dropped < budget:     # a datagram dropped as too long counts against the budget
        want = budget - n - dropped
        if want > UDP_CHUNK:
            want = UDP_CHUNK
        for k in range(want):
            index = ring.tail + n + k
            # the stride's spare byte: a datagram of slot_size + 1 bytes or more shows up
            _udp_msg(&msgs[k], &iovs[k], ring_fresh(ring, index), ring.slot_size + 1,
                     ring_peer(ring, index), sizeof(te_sockaddr))
        got = recvmmsg(fd, msgs, want, MSG_DONTWAIT, NULL)
        if got < 0:
            if errno == EINTR:
                continue
            if not would_block(errno):
                err[0] = errno
            break
        base = n
        for k in range(<uint32_t>got):
            length = msgs[k].msg_len
            if (msgs[k].msg_hdr.msg_flags & MSG_TRUNC) or length > ring.slot_size:
                ring.truncated += 1     # cut by the kernel: dropped, the next one closes the gap
                dropped += 1
                continue
            index = ring.tail + base + k
            if msgs[k].msg_hdr.msg_namelen < sizeof(ring_peer(ring, index).sa.sa_family):
                ring_peer(ring, index).sa.sa_family = AF_UNSPEC
            if base + k != n:
                # a gap left by a dropped datagram: move this one down, slots stay contiguous
                memmove(ring_frame(ring, ring.tail + n), ring_frame(ring, index), length)
                memcpy(ring_peer(ring, ring.tail + n), ring_peer(ring, index), sizeof(te_sockaddr))
            ring_len(ring, ring.tail + n)[0] = length
            n += 1
        if <uint32_t>got < want:
            break           # the socket's queue is empty
    ring.tail += n
    return n


@cython.boundscheck(False)
cdef uint32_t udp_send(int fd, PacketRing ring, uint32_t first, uint32_t count,
                       int *err) noexcept nogil:
    cdef mmsghdr msgs[UDP_CHUNK]
    cdef iovec iovs[UDP_CHUNK]
    cdef uint32_t n = 0, want, k, index
    cdef int put, refused, family
    cdef te_sockaddr *peer
    cdef socklen_t namelen
    err[0] = 0
    while n < count:
        want = count - n
        if want > UDP_CHUNK:
            want = UDP_CHUNK
        refused = 0
        for k in range(want):
            index = first + n + k
            if not ring_slot_ok(ring, index):
                refused = EMSGSIZE      # a length or offset past the slot: never read
            peer = ring_peer(ring, index)
            family = peer.sa.sa_family
            if family == AF_INET:
                namelen = sizeof(sockaddr_in)
            elif family == AF_INET6:
                namelen = sizeof(sockaddr_in6)
            elif family == AF_UNSPEC:
                namelen = 0             # the connected peer
            else:
                refused = EAFNOSUPPORT
            if refused:
                want = k
                break
            _udp_msg(&msgs[k], &iovs[k], ring_frame(ring, index), ring_len(ring, index)[0],
                     peer if namelen else NULL, namelen)
        if want:
            put = sendmmsg(fd, msgs, want, MSG_DONTWAIT)
            if put < 0:
                if errno == EINTR:
                    continue
                if not would_block(errno):
                    err[0] = errno
                return n
            n += <uint32_t>put
            if <uint32_t>put < want:
                continue        # the next call reports why (or EAGAIN) for the first unsent one
        if refused:
            err[0] = refused
            return n
    return n


cdef int udp_socket_family(int fd) noexcept nogil:
    # Returns AF_INET or AF_INET6 when fd is a UDP (SOCK_DGRAM) socket of that family, else 0.
    cdef int value = 0
    cdef socklen_t size = sizeof(value)
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &size) < 0 or value != SOCK_DGRAM:
        return 0
    size = sizeof(value)
    if getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &size) < 0:
        return 0
    return value if value == AF_INET or value == AF_INET6 else 0


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
        """Release what the backend holds (nothing for read/write); closing twice is a no-op."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


cdef class ReadvIO(BatchIO):
    """The read/write backend (named "readv"): one syscall per packet, no state, usable from any
    thread."""

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


cdef class PortIO:
    """A port that is not a tun/tap fd: it moves batches between something (a UDP socket, a
    VXLAN tunnel) and a ring itself. ``Forwarder.add_port(..., port_io=...)`` calls its C
    ``recv``/``send`` (``pyx/batchio.pxd``) and waits on ``fd``; Python code may use
    ``recv_batch``/``send_batch``. Subclass it in Cython; this base moves nothing.
    """

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.l2 = False
        self._users = 0
        if type(self) is PortIO:
            raise TypeError("PortIO is an interface: use UdpPortIO (or another subclass)")

    def __dealloc__(self):
        self._close_fd()

    cdef uint32_t recv(self, PacketRing ring, uint32_t budget, int *err) noexcept nogil:
        # Returns 0 with ENOSYS: every port overrides it.
        err[0] = ENOSYS
        return 0

    cdef uint32_t send(self, PacketRing ring, uint32_t first, uint32_t count,
                       int *err) noexcept nogil:
        # Returns 0 with ENOSYS: every port overrides it.
        err[0] = ENOSYS
        return 0

    cdef int check_send(self, PacketRing ring, uint32_t first, uint32_t count) except -1:
        # Returns 0 when slots [first, first + count) may be sent as they are, else raises
        # ValueError (before anything moves); the C send checks each slot again anyway.
        return ring_check_lengths(ring, first, count)

    cdef void _close_fd(self) noexcept:
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def fileno(self):
        """The descriptor that becomes readable when there is something to receive."""
        return self.fd

    def recv_batch(self, PacketRing ring not None, budget=64):
        """Receive up to ``budget`` packets into the ring's free slots (``tail`` advances);
        returns how many. Errors as ``tapengine.recv_batch``."""
        ring._check_open()
        if budget < 0:
            raise ValueError(f"budget must be >= 0, not {budget}")
        cdef uint32_t cbudget = min(budget, ring.nslots), n
        cdef int err
        self._begin(ring)
        try:
            with nogil:
                n = self.recv(ring, cbudget, &err)
        finally:
            self._end(ring)
        if err:
            raise_errno(err, f"receiving a batch from {self!r}", n)
        return n

    def send_batch(self, PacketRing ring not None, first, count):
        """Send ``count`` packets from slots ``first`` onwards; returns how many went out (fewer:
        the socket would block). Raises ``ValueError`` before sending anything when a slot's
        length, offset or peer is invalid; errors as ``tapengine.send_batch``."""
        ring._check_open()
        if count < 0 or count > ring.nslots:
            raise ValueError(f"count must be between 0 and {ring.nslots}, not {count}")
        cdef uint32_t cfirst = ring_index(first), ccount = count, n
        cdef int err
        self.check_send(ring, cfirst, ccount)
        self._begin(ring)
        try:
            with nogil:
                n = self.send(ring, cfirst, ccount, &err)
        finally:
            self._end(ring)
        if err:
            raise_errno(err, f"sending a batch to {self!r}", n)
        return n

    def _begin(self, PacketRing ring):
        if self.fd < 0:
            raise ValueError(f"{type(self).__name__} is closed")
        use_begin(ring, None)
        self._users += 1

    def _end(self, PacketRing ring):
        use_end(ring, None)
        self._users -= 1

    def close(self):
        """Close the port's own descriptor; closing twice is a no-op. Raises ``BufferError``
        while a forwarder or a batch uses it."""
        if self._users:
            raise BufferError(f"cannot close {type(self).__name__}: a C loop uses it (a "
                              "forwarder, or a batch running in another thread): stop it first")
        self._close_fd()

    @property
    def closed(self):
        return self.fd < 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


cdef class UdpPortIO(PortIO):
    """A UDP socket as a port (IPv4 or IPv6, bound, connected or not): recvmmsg()/sendmmsg(), up
    to ``UDP_CHUNK`` datagrams per call, the peer of each datagram in its slot's ``peers``.

    A received datagram lands at ``FRAME_OFFSET`` with its source address as the slot's peer; one
    longer than ``slot_size`` is dropped and counted in ``ring.truncated``, never cut. A slot is
    sent to its peer, or (family 0) to the socket's connected peer. ``sock`` is a socket or a
    descriptor; the port keeps its own ``dup()`` of it (closed by ``close()``), so the caller may
    close ``sock`` at any time. ``l2``: the datagrams carry Ethernet frames (a switch port).
    """

    def __init__(self, sock, *, bint l2=False):
        cdef int cfd = fd_of(sock)
        cdef int family = udp_socket_family(cfd)
        if family == 0:
            raise ValueError(f"fd {cfd} is not a UDP socket (AF_INET or AF_INET6, SOCK_DGRAM)")
        cdef int own = fcntl(cfd, F_DUPFD_CLOEXEC, 0)
        if own < 0:
            raise_errno(errno, f"duplicating fd {cfd}")
        self._close_fd()
        self.fd = own
        self.family = family
        self.l2 = l2

    cdef uint32_t recv(self, PacketRing ring, uint32_t budget, int *err) noexcept nogil:
        # Returns what udp_recv returns.
        return udp_recv(self.fd, ring, budget, err)

    cdef uint32_t send(self, PacketRing ring, uint32_t first, uint32_t count,
                       int *err) noexcept nogil:
        # Returns what udp_send returns.
        return udp_send(self.fd, ring, first, count, err)

    cdef int check_send(self, PacketRing ring, uint32_t first, uint32_t count) except -1:
        # Returns 0 when lengths, offsets and peers of the batch are valid, else raises.
        ring_check_lengths(ring, first, count)
        return ring_check_peers(ring, first, count)

    def __repr__(self):
        family = "closed" if self.fd < 0 else ("IPv6" if self.family == AF_INET6 else "IPv4")
        return f"<UdpPortIO fd {self.fd}, {family}>"


def recv_batch(fd, PacketRing ring not None, budget=64, *, bint vnet_hdr=False, BatchIO io=None):
    """Read up to ``budget`` packets from a non-blocking tun/tap fd (or a UDP socket) into the
    ring's free slots.

    Packets land at ``ring.tail`` onwards and ``tail`` advances by the number returned. Stops at
    ``EAGAIN`` (nothing more now), at the budget or when the ring is full; a frame longer than
    ``ring.slot_size`` is dropped, counted in ``ring.truncated`` and counts against the budget
    (so at most ``budget`` frames are read per call). Any other error raises
    the matching ``OSError`` subclass whose ``completed`` attribute says how many packets were
    read (and kept in the ring) before it. ``io``: a backend (``open_batch_io()``; a ``UringIO``
    belongs to one thread), or None for read().

    A UDP socket (AF_INET/AF_INET6, SOCK_DGRAM) is read with recvmmsg() as ``UdpPortIO`` reads
    it: each datagram's source address in its slot's ``peers``; ``vnet_hdr`` must be false and
    ``io`` is not used.
    """
    cdef int cfd = fd_of(fd)
    ring._check_open()
    if budget < 0:
        raise ValueError(f"budget must be >= 0, not {budget}")
    cdef uint32_t cbudget = min(budget, ring.nslots)
    cdef int err
    cdef uint32_t n
    cdef bint udp = _udp_port(cfd, vnet_hdr)
    if udp:
        io = None
    if io is not None:
        io.check()
    use_begin(ring, io)
    try:
        with nogil:
            if udp:
                n = udp_recv(cfd, ring, cbudget, &err)
            else:
                n = ring_recv_via(io, cfd, ring, cbudget, vnet_hdr, &err)
    finally:
        use_end(ring, io)
    if err:
        raise_errno(err, f"reading a batch from fd {cfd}", n)
    return n


def send_batch(fd, PacketRing ring not None, first, count, *, bint vnet_hdr=False,
               BatchIO io=None):
    """Write ``count`` packets from slots ``first`` onwards (free-running, masked) to a tun/tap fd
    (or a UDP socket).

    Returns the number written; fewer than ``count`` means the fd would block (``EAGAIN``). Any
    other error raises the matching ``OSError`` subclass whose ``completed`` attribute says how many
    packets were written before it. ``head`` is not moved: call ``ring.consume()`` when done.
    ``first`` is any int, kept modulo 2**32. Raises ``ValueError`` before writing anything when a
    length or offset of the batch breaks the ring's invariant (``pyx/ring.pxd``).
    ``io``: a backend (``open_batch_io()``; a ``UringIO`` belongs to one thread), or None for
    write().

    A UDP socket (AF_INET/AF_INET6, SOCK_DGRAM) is written with sendmmsg() as ``UdpPortIO``
    writes it: each slot to its ``peers`` address, or (family 0) to the connected peer; a peer of
    another family raises ``ValueError`` before anything is sent. ``vnet_hdr`` must be false and
    ``io`` is not used.
    """
    cdef int cfd = fd_of(fd)
    ring._check_open()
    if count < 0 or count > ring.nslots:
        raise ValueError(f"count must be between 0 and {ring.nslots}, not {count}")
    cdef uint32_t cfirst = ring_index(first), ccount = count
    cdef int err
    cdef uint32_t n
    cdef bint udp = _udp_port(cfd, vnet_hdr)
    ring_check_lengths(ring, cfirst, ccount)
    if udp:
        ring_check_peers(ring, cfirst, ccount)
        io = None
    if io is not None:
        io.check()
    use_begin(ring, io)
    try:
        with nogil:
            if udp:
                n = udp_send(cfd, ring, cfirst, ccount, &err)
            else:
                n = ring_send_via(io, cfd, ring, cfirst, ccount, vnet_hdr, &err)
    finally:
        use_end(ring, io)
    if err:
        raise_errno(err, f"writing a batch to fd {cfd}", n)
    return n


cdef bint _udp_port(int fd, bint vnet_hdr) except -1:
    # Returns True when fd is a UDP socket (recvmmsg/sendmmsg), False for anything else (one
    # packet per read/write); raises ValueError for a UDP socket with vnet_hdr.
    if udp_socket_family(fd) == 0:
        return False
    if vnet_hdr:
        raise ValueError(f"fd {fd} is a UDP socket: its datagrams carry no virtio-net header "
                         "(vnet_hdr=False)")
    return True
