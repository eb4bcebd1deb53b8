# cython: language_level=3, embedsignature=True
"""The packet ring: preallocated slots for frames, their virtio-net headers, lengths, offsets and
peer addresses.

Each slot is ``stride`` bytes: ``HEADROOM`` (70) bytes of headroom, the frame's 10-byte
virtio-net header, then the frame at ``FRAME_OFFSET`` (80) where every receive puts it. A stage
may move a frame's start (``offsets``) to prepend or strip a header without a copy; see
``pyx/ring.pxd`` for the layout and the safety invariant every C loop checks.

Numpy views of the ring (``frames``, ``slots``, ``lengths``, ``offsets``, ``headers``,
``peers``) share its memory. Each view counts
as an export while it is alive; ``close()`` and ``resize()`` raise ``BufferError`` until every
view is gone, so no view can ever point at freed memory.

Indices are free-running ``uint32`` values that wrap at 2**32 in Python as in C: every index
argument and ``head``/``tail`` take any int and keep it modulo 2**32 (``ring_index``). A length
and an offset written through ``lengths``/``offsets`` are checked against the slot before C uses
them (``pyx/ring.pxd``).
"""

cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.long cimport PyLong_AsUnsignedLongMask
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from posix.mman cimport (
    MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, madvise, mmap,
    munmap,
)

from tapengine.includes.system cimport (
    AF_INET, AF_INET6, AF_UNSPEC, posix_memalign,
)

import socket

import numpy as np

# Largest slot: a 64 KiB GSO superframe plus an Ethernet header, rounded to a cache line.
MAX_SLOT_SIZE = 65536 + 128
MIN_SLOT_SIZE = 64
MAX_SLOTS = 1 << 20
CACHE_LINE = 64
# Slabs of at least this many bytes get MADV_HUGEPAGE (x86-64's 2 MiB huge page).
cdef size_t HUGE_PAGE = 2 << 20

#: numpy dtype of one ``struct virtio_net_hdr`` (host byte order, as the tun driver uses on x86).
VNET_HDR_DTYPE = np.dtype(
    [("flags", "u1"), ("gso_type", "u1"), ("hdr_len", "=u2"), ("gso_size", "=u2"),
     ("csum_start", "=u2"), ("csum_offset", "=u2")],
    align=False,
)
assert VNET_HDR_DTYPE.itemsize == VNET_HDR_LEN

# FRAME_OFFSET (80: where every receive puts a frame in its slot) and HEADROOM (70: the bytes in
# front of the virtio-net header; VXLAN over IPv6 fits) are the cpdef enum of pyx/ring.pxd.
assert HEADROOM + VNET_HDR_LEN == FRAME_OFFSET

#: numpy dtype of one slot's peer address (28 bytes, ``struct sockaddr_in6`` sized). ``family``
#: is host order (0: no address, ``socket.AF_INET``, ``socket.AF_INET6``), ``port`` network
#: order as the kernel keeps it (the dtype reads it as big endian, so values are plain port
#: numbers). AF_INET uses ``addr4`` (4 bytes); AF_INET6 ``flowinfo``, ``addr6`` (16 bytes) and
#: ``scope_id``. ``addr4`` and ``flowinfo`` overlap, as the two sockaddr structs do.
PEER_DTYPE = np.dtype({
    "names": ["family", "port", "addr4", "flowinfo", "addr6", "scope_id"],
    "formats": ["=u2", ">u2", ("u1", 4), ">u4", ("u1", 16), "=u4"],
    "offsets": [0, 2, 4, 4, 8, 24],
    "itemsize": PEER_SIZE,
})


cdef enum _Region:
    REGION_FRAMES
    REGION_SLOTS
    REGION_LENGTHS
    REGION_OFFSETS
    REGION_HEADERS
    REGION_PEERS


@cython.final
cdef class _RegionExport:
    """Exports one region of a ring through the buffer protocol, counting live views."""

    cdef PacketRing ring
    cdef int region
    cdef Py_ssize_t shape[2]
    cdef Py_ssize_t strides[2]

    def __cinit__(self, PacketRing ring, int region):
        self.ring = ring
        self.region = region

    def __getbuffer__(self, Py_buffer *view, int flags):
        cdef PacketRing ring = self.ring
        if ring.slab == NULL:
            raise ValueError("the packet ring is closed")
        view.readonly = 0
        view.suboffsets = NULL
        view.internal = NULL
        view.shape = self.shape
        view.strides = self.strides
        view.itemsize = 1
        view.format = "B"
        view.ndim = 2
        self.strides[0], self.strides[1] = ring.stride, 1
        if self.region == REGION_FRAMES:
            view.buf = ring.slab + FRAME_OFFSET
            self.shape[0], self.shape[1] = ring.nslots, ring.slot_size
        elif self.region == REGION_SLOTS:
            view.buf = ring.slab
            self.shape[0], self.shape[1] = ring.nslots, ring.stride
        elif self.region == REGION_HEADERS:
            view.buf = ring.slab + FRAME_OFFSET - VNET_HDR_LEN
            self.shape[0], self.shape[1] = ring.nslots, VNET_HDR_LEN
        elif self.region == REGION_PEERS:
            view.buf = ring.peers
            self.shape[0], self.shape[1] = ring.nslots, PEER_SIZE
            self.strides[0] = PEER_SIZE
        elif self.region == REGION_LENGTHS:
            view.buf = ring.lens
            view.itemsize = sizeof(uint32_t)
            view.format = "I"
            view.ndim = 1
            self.shape[0], self.strides[0] = ring.nslots, sizeof(uint32_t)
        else:
            view.buf = ring.offs
            view.itemsize = sizeof(uint16_t)
            view.format = "H"
            view.ndim = 1
            self.shape[0], self.strides[0] = ring.nslots, sizeof(uint16_t)
        view.len = self.shape[0] * view.itemsize * (self.shape[1] if view.ndim == 2 else 1)
        if not (flags & PyBUF_FORMAT):
            view.format = NULL
        view.obj = self
        ring._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.ring._exports -= 1


cdef class PacketRing:
    """A ring of ``nslots`` packet slots of ``slot_size`` bytes each.

    ``nslots`` must be a power of two. Slots ``[head, tail)`` hold packets; the free-running
    indices are masked on use, so ``tail - head`` is the number of packets held.
    """

    def __cinit__(self, nslots=256, slot_size=2048):
        self.slab = NULL
        self.peers = NULL
        self.lens = NULL
        self.offs = NULL
        self._exports = 0
        self.truncated = 0
        nslots, slot_size = _checked_geometry(nslots, slot_size)
        self._allocate(nslots, slot_size)

    def __dealloc__(self):
        self._free()

    cdef int _allocate(self, uint32_t nslots, uint32_t slot_size) except -1:
        # Returns 0; raises MemoryError when the slab cannot be had.
        # One spare byte at least: receives read slot_size + 1 bytes to see a frame too long.
        cdef uint32_t stride = (FRAME_OFFSET + slot_size + CACHE_LINE) // CACHE_LINE * CACHE_LINE
        cdef void *slab
        cdef void *meta = NULL
        cdef size_t meta_size = <size_t>nslots * (PEER_SIZE + sizeof(uint32_t) + sizeof(uint16_t))
        cdef size_t size = <size_t>nslots * stride
        cdef uint32_t k
        # Anonymous pages: page aligned, and zero (headroom and headers of slots never written
        # read as zero) without touching them, so a large ring costs nothing until it is used.
        slab = mmap(NULL, <size_t>nslots * stride, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if slab == MAP_FAILED:
            raise MemoryError(f"cannot allocate a packet ring of {nslots} x {stride} bytes")
        if size >= HUGE_PAGE:
            # Transparent huge pages for a large slab (the kernel aligns such a mapping to 2 MiB):
            # 64 KiB strides put every small frame of a batch on its own 4 KiB page, one TLB
            # entry each, where two huge pages cover the whole slab. Best effort: THP may be off.
            madvise(slab, size, MADV_HUGEPAGE)
        if posix_memalign(&meta, CACHE_LINE, meta_size) != 0:
            munmap(slab, <size_t>nslots * stride)
            raise MemoryError(f"cannot allocate the lengths, offsets and peers of {nslots} slots")
        memset(meta, 0, meta_size)
        self.slab = <uint8_t *>slab
        self.peers = <te_sockaddr *>meta      # 28-byte items: 4-byte aligned, as sockaddr_in6
        self.lens = <uint32_t *>(<uint8_t *>meta + <size_t>nslots * PEER_SIZE)
        self.offs = <uint16_t *>(self.lens + nslots)
        for k in range(nslots):
            self.offs[k] = FRAME_OFFSET
        self.nslots = nslots
        self.mask = nslots - 1
        self.slot_size = slot_size
        self.stride = stride
        self.head = 0
        self.tail = 0
        return 0

    cdef void _free(self) noexcept:
        if self.slab != NULL:
            munmap(self.slab, <size_t>self.nslots * self.stride)
        free(self.peers)    # peers, lengths and offsets share one allocation
        self.slab = NULL
        self.peers = NULL
        self.lens = NULL
        self.offs = NULL

    cdef int _check_open(self) except -1:
        if self.slab == NULL:
            raise ValueError("the packet ring is closed")
        return 0

    cdef int _check_unexported(self, str action) except -1:
        if self._exports:
            raise BufferError(
                f"cannot {action} the packet ring: {self._exports} view(s) of it still exist"
            )
        return 0

    # -- lifetime -------------------------------------------------------------------------

    def close(self):
        """Free the slab. Raises ``BufferError`` while views exist or a forwarder uses the ring;
        closing twice is a no-op."""
        self._check_unexported("close")
        _check_unused(self, "close")
        self._free()

    def resize(self, nslots, slot_size=None):
        """Reallocate with a new geometry; packets held are discarded, indices reset."""
        self._check_open()
        self._check_unexported("resize")
        _check_unused(self, "resize")
        nslots, slot_size = _checked_geometry(
            nslots, self.slot_size if slot_size is None else slot_size
        )
        self._free()
        self._allocate(nslots, slot_size)

    @property
    def closed(self):
        return self.slab == NULL

    @property
    def exports(self):
        """Number of live buffer views of this ring."""
        return self._exports

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __len__(self):
        return self.tail - self.head

    def __repr__(self):
        state = "closed" if self.slab == NULL else f"{self.tail - self.head} pending"
        return f"<PacketRing {self.nslots} x {self.slot_size} B, {state}>"

    # -- zero-copy views ------------------------------------------------------------------

    @property
    def frames(self):
        """``uint8[nslots, slot_size]`` view of the frames at ``FRAME_OFFSET``, where every
        receive puts them (slot ``i & mask``); a frame moved by its offset is in ``slots``."""
        self._check_open()
        return np.asarray(_RegionExport(self, REGION_FRAMES))

    @property
    def slots(self):
        """``uint8[nslots, stride]`` view of the whole slots: headroom, header, frame, spare."""
        self._check_open()
        return np.asarray(_RegionExport(self, REGION_SLOTS))

    @property
    def offsets(self):
        """``uint16[nslots]`` view of where each frame starts in its slot (``FRAME_OFFSET``
        after a receive); checked with the lengths before C uses them."""
        self._check_open()
        return np.asarray(_RegionExport(self, REGION_OFFSETS))

    @property
    def peers(self):
        """``PEER_DTYPE[nslots]`` view of each slot's peer address (family 0: none)."""
        self._check_open()
        return np.asarray(_RegionExport(self, REGION_PEERS)).view(PEER_DTYPE)[:, 0]

    @property
    def lengths(self):
        """``uint32[nslots]`` view of the frame lengths."""
        self._check_open()
        return np.asarray(_RegionExport(self, REGION_LENGTHS))

    @property
    def headers(self):
        """``VNET_HDR_DTYPE[nslots]`` view of the virtio-net headers in front of the frames at
        ``FRAME_OFFSET`` (a strided view into the slots)."""
        self._check_open()
        raw = np.asarray(_RegionExport(self, REGION_HEADERS))
        return raw.view(VNET_HDR_DTYPE)[:, 0]

    # -- indices --------------------------------------------------------------------------

    @property
    def head(self):
        """Free-running index of the first packet held; set it to any int (kept modulo 2**32)."""
        return self.head

    @head.setter
    def head(self, value):
        self.head = ring_index(value)

    @property
    def tail(self):
        """Free-running index of the first free slot; set it to any int (kept modulo 2**32)."""
        return self.tail

    @tail.setter
    def tail(self, value):
        self.tail = ring_index(value)

    @property
    def pending(self):
        """Packets held: ``tail - head``."""
        return self.tail - self.head

    @property
    def free(self):
        """Slots free for new packets."""
        return self.nslots - (self.tail - self.head)

    def consume(self, count):
        """Advance ``head`` by ``count`` packets (they were sent or processed)."""
        cdef uint32_t pending = self.tail - self.head
        if count < 0 or count > pending:
            raise ValueError(f"cannot consume {count} packets: {pending} pending")
        self.head += <uint32_t>count

    def clear(self):
        """Forget every packet held; the next packet goes to slot 0."""
        self.head = self.tail = 0

    # -- copying in and out (set-up, tests and tools; the data plane never copies) ----------

    def push(self, data, header=None):
        """Copy one frame (and optionally its 10-byte virtio-net header) into the tail slot, at
        ``FRAME_OFFSET`` with no peer.

        Returns the free-running index of the slot. Raises ``BufferError`` when the ring is full
        and ``ValueError`` when the frame does not fit a slot.
        """
        self._check_open()
        if self.tail - self.head >= self.nslots:
            raise BufferError(f"the packet ring is full ({self.nslots} packets pending)")
        cdef uint32_t index = self.tail
        self._store(index, data, header)
        self.tail += 1
        return index

    def store(self, index, data, header=None):
        """Copy a frame into slot ``index`` (free-running, any int) at ``FRAME_OFFSET`` and set
        its length (the peer is cleared); no index moves."""
        self._check_open()
        self._store(ring_index(index), data, header)

    cdef int _store(self, uint32_t index, data, header) except -1:
        # Returns 0 with the frame (and header) copied into slot ``index``; raises when it does
        # not fit or is not bytes-like.
        cdef Py_buffer frame, hdr
        _get_bytes(data, &frame)
        try:
            if <size_t>frame.len > self.slot_size:
                raise ValueError(
                    f"frame of {frame.len} bytes does not fit a slot of {self.slot_size} bytes"
                )
            memcpy(ring_fresh(self, index), frame.buf, frame.len)
            if header is None:
                memset(ring_hdr(self, index), 0, VNET_HDR_LEN)
            else:
                _get_bytes(header, &hdr)
                try:
                    if hdr.len != VNET_HDR_LEN:
                        raise ValueError(
                            f"a virtio-net header is {VNET_HDR_LEN} bytes, not {hdr.len}"
                        )
                    memcpy(ring_hdr(self, index), hdr.buf, VNET_HDR_LEN)
                finally:
                    PyBuffer_Release(&hdr)
            ring_len(self, index)[0] = <uint32_t>frame.len
        finally:
            PyBuffer_Release(&frame)
        return 0

    def packet(self, index):
        """A copy (``bytes``) of the frame in slot ``index`` (free-running, any int), from its
        offset.

        Raises ``ValueError`` when the slot's length or offset (written through ``lengths`` or
        ``offsets``) break the invariant of ``pyx/ring.pxd``.
        """
        self._check_open()
        cdef uint32_t i = ring_index(index)
        ring_check_lengths(self, i, 1)
        return (<char *>ring_frame(self, i))[:ring_len(self, i)[0]]

    def header(self, index):
        """A copy (``bytes``) of the virtio-net header of slot ``index`` (free-running, any int):
        the 10 bytes in front of its frame."""
        self._check_open()
        cdef uint32_t i = ring_index(index)
        ring_check_lengths(self, i, 1)
        return (<char *>ring_hdr(self, i))[:VNET_HDR_LEN]

    def peer(self, index):
        """The peer address of slot ``index`` as ``(host, port)``, or None when it has none
        (family 0). Raises ``ValueError`` for a family other than AF_INET/AF_INET6."""
        self._check_open()
        cdef te_sockaddr *sa = ring_peer(self, ring_index(index))
        cdef int family = sa.sa.sa_family
        if family == AF_UNSPEC:
            return None
        if family == AF_INET:
            return (socket.inet_ntop(socket.AF_INET, (<char *>&sa.in4.sin_addr)[:4]),
                    socket.ntohs(sa.in4.sin_port))
        if family == AF_INET6:
            return (socket.inet_ntop(socket.AF_INET6, (<char *>&sa.in6.sin6_addr)[:16]),
                    socket.ntohs(sa.in6.sin6_port))
        raise ValueError(f"slot {index} holds a peer of address family {family}, "
                         "neither AF_INET nor AF_INET6")

    def set_peer(self, index, address):
        """Set the peer address of slot ``index``: ``(host, port)`` with a numeric IPv4 or IPv6
        host (an IPv6 one may add ``flowinfo`` and ``scope_id`` as ``socket`` does), or None for
        no address (a connected socket then sends to its own peer)."""
        self._check_open()
        cdef uint32_t i = ring_index(index)
        cdef te_sockaddr peer
        memset(&peer, 0, sizeof(peer))
        if address is not None:
            _parse_peer(address, &peer)
        memcpy(ring_peer(self, i), &peer, sizeof(peer))


cdef uint32_t ring_index(object index) except? 0:
    # Returns index modulo 2**32 (the mask of an unsigned long keeps the low bits of any int,
    # negative ones in two's complement); raises TypeError for a non-integer.
    return <uint32_t>PyLong_AsUnsignedLongMask(PyNumber_Index(index))


cdef int ring_check_lengths(PacketRing ring, uint32_t first, uint32_t count) except -1:
    # Returns 0 when slots [first, first + count) all keep the invariant, else raises.
    cdef uint32_t k = ring_lengths_ok(ring, first, count)
    cdef uint32_t i = first + k
    if k < count:
        raise ValueError(
            f"slot {i} holds a length of {ring_len(ring, i)[0]} bytes at offset "
            f"{ring_off(ring, i)[0]}, which does not fit the slot: a length is at most "
            f"slot_size ({ring.slot_size}), an offset at least {VNET_HDR_LEN} (room for the "
            f"virtio-net header) and offset + length at most {FRAME_OFFSET + ring.slot_size}"
        )
    return 0


cdef int ring_check_peers(PacketRing ring, uint32_t first, uint32_t count) except -1:
    # Returns 0 when every peer of the batch is of a family a UDP send takes, else raises.
    cdef uint32_t k
    cdef int family
    for k in range(count):
        family = ring_peer(ring, first + k).sa.sa_family
        if family != AF_UNSPEC and family != AF_INET and family != AF_INET6:
            raise ValueError(f"slot {<uint32_t>(first + k)} holds a peer of address family "
                             f"{family}: a peer is of family 0 (none), AF_INET or AF_INET6")
    return 0


cdef int _parse_peer(address, te_sockaddr *peer) except -1:
    # Returns 0 with ``address`` ((host, port[, flowinfo, scope_id])) stored in *peer (zeroed by
    # the caller); raises ValueError or TypeError for anything else.
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError(f"a peer address is (host, port) or None, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str):
        raise TypeError(f"a peer's host is a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"a peer's port is an int between 0 and 65535, not {port!r}")
    cdef bytes packed
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except OSError:
        packed = None
    if packed is not None and len(address) == 2:
        peer.in4.sin_family = AF_INET
        peer.in4.sin_port = socket.htons(port)
        memcpy(&peer.in4.sin_addr, <char *>packed, 4)
        return 0
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        raise ValueError(f"a peer's host is a numeric IPv4 or IPv6 address, not {host!r}") from None
    flowinfo, scope_id = address[2:] if len(address) == 4 else (0, 0)
    for name, value in (("flowinfo", flowinfo), ("scope_id", scope_id)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise ValueError(f"a peer's {name} is an int between 0 and 2**32 - 1, not {value!r}")
    peer.in6.sin6_family = AF_INET6
    peer.in6.sin6_port = socket.htons(port)
    peer.in6.sin6_flowinfo = socket.htonl(flowinfo)
    memcpy(&peer.in6.sin6_addr, <char *>packed, 16)
    peer.in6.sin6_scope_id = scope_id
    return 0


cdef int _check_unused(PacketRing ring, str action) except -1:
    # Returns 0 when no C loop serves from the ring (Forwarder.add_port counts itself in
    # ``_users`` until its close()), else raises BufferError.
    if ring._users:
        raise BufferError(f"cannot {action} the packet ring: a C loop uses it (a forwarder, or "
                          "a batch, generator or sink running in another thread): stop it first")
    return 0


cdef int _get_bytes(data, Py_buffer *view) except -1:
    # Returns 0 with a contiguous byte view of ``data`` held in *view (release it), or raises.
    if isinstance(data, str):
        raise TypeError("frames are bytes-like, not str")
    PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    return 0


def _checked_geometry(nslots, slot_size):
    for name, value in (("nslots", nslots), ("slot_size", slot_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= nslots <= MAX_SLOTS or nslots & (nslots - 1):
        raise ValueError(f"nslots must be a power of two between 1 and {MAX_SLOTS}, not {nslots}")
    if not MIN_SLOT_SIZE <= slot_size <= MAX_SLOT_SIZE:
        raise ValueError(
            f"slot_size must be between {MIN_SLOT_SIZE} and {MAX_SLOT_SIZE} bytes, not {slot_size}"
        )
    return nslots, slot_size


#: Link-layer bytes in front of an IP packet on a tap: Ethernet header and two VLAN tags (QinQ).
TAP_L2_OVERHEAD = 14 + 2 * 4


def slot_size_for(mtu, superframes=False, mode="tap"):
    """The ``slot_size`` that holds every frame a tun/tap device can hand over.

    ``mtu`` is the device MTU (68 .. 65535). ``superframes`` is true when GSO superframes can
    arrive (``IFF_VNET_HDR`` with TSO/USO negotiated by ``TUNSETOFFLOAD``): then up to 64 KiB,
    ``MAX_SLOT_SIZE``. Otherwise the MTU plus what precedes the IP packet: nothing on a tun
    (``mode="tun"``, IFF_NO_PI), an Ethernet header and up to two VLAN tags on a tap
    (``mode="tap"``, ``TAP_L2_OVERHEAD`` bytes). The virtio-net header and the headroom sit in
    front of the frame (``FRAME_OFFSET``) and need none of this room. A frame longer than this
    is still dropped and counted (``PacketRing.truncated``), never cut.
    """
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise TypeError(f"mtu must be an int, not {type(mtu).__name__}")
    if not 68 <= mtu <= 65535:
        raise ValueError(f"mtu must be between 68 and 65535, not {mtu}")
    if mode not in ("tap", "tun"):
        raise ValueError(f"mode must be 'tap' or 'tun', not {mode!r}")
    if superframes:
        return MAX_SLOT_SIZE
    return mtu + (TAP_L2_OVERHEAD if mode == "tap" else 0)     # >= 68 > MIN_SLOT_SIZE
