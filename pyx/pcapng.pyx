# cython: language_level=3, embedsignature=True
"""pcapng capture and pcap/pcapng replay.

``PcapngWriter`` writes a pcapng file: a Section Header Block, an Interface Description Block per
interface (its name, the link type, ``if_tsresol`` 9: nanosecond timestamps), then an Enhanced
Packet Block per frame with the ``epb_flags`` direction, and at ``close()`` an Interface
Statistics Block per interface with the counts the caller hands over. Frames enter through
``capture_batch()`` (C, from a forwarding stage or ``capture_run()``) into a bounded buffer; the
writer's drain thread writes it out. A full buffer drops frames (counted), it never blocks the
caller. ``rotate_bytes`` starts a new file (``FILE``, ``FILE1``, ``FILE2`` ... like tcpdump -C)
once a file has reached that size, each with its own section and interface blocks.

``PcapReader`` reads pcap (microsecond or nanosecond, either byte order) and pcapng (any
``if_tsresol``, any number of sections and interfaces; Enhanced, Simple and obsolete Packet
Blocks) from a memory map; ``scan()`` checks the whole file before anything is sent.

``Replayer`` writes a file's packets into a tun/tap in batches, paced by the generator's token
bucket (packets or bits per second), by the file's timestamps (``speed`` times faster), or as
fast as the device takes them; ``loops`` passes over the file.
"""

cimport cython
from libc.errno cimport EFAULT, EINTR, EINVAL, EMSGSIZE, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec
from posix.unistd cimport close, read, write

from tapengine._batchio cimport BatchIO, ring_recv_via, ring_send_via, use_begin, use_end
from tapengine._gso cimport GSO_OUT_FULL_CSUM, VNET_F_NEEDS_CSUM, VNET_GSO_NONE, gso_segment
from tapengine._pktgen cimport (
    bucket_admit, bucket_set, bucket_spend, bucket_wait_ns, monotonic_ns, sleep_until,
    wait_or_stop,
)
from tapengine._ring cimport (
    PacketRing, ring_frame, ring_fresh, ring_hdr, ring_index, ring_len, ring_slot_ok,
)
from tapengine._stage cimport Stage
from tapengine.includes.atomics cimport (
    te_atomic_exchange_int, te_atomic_fence, te_atomic_load_int, te_atomic_load_u64,
    te_atomic_store_int, te_atomic_store_u64,
)
from tapengine.includes.consts cimport VNET_HDR_LEN
from tapengine.includes.system cimport (
    EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, POLLOUT, eventfd, poll, pollfd, posix_memalign,
    pthread_mutex_destroy, pthread_mutex_init, pthread_mutex_lock, pthread_mutex_unlock,
)
from tapengine.syscall cimport fd_of, raise_errno

import mmap
import os
import struct
import threading

import numpy as np

from tapengine.errors import PcapFormatError

CAPTURE_COUNTERS_DTYPE = np.dtype([(name, "u8") for name in (
    "packets", "bytes", "dropped", "superframes", "whole")])
REPLAY_COUNTERS_DTYPE = np.dtype([(name, "u8") for name in (
    "packets", "bytes", "failed", "too_long", "loops", "first_ns", "last_ns", "snapped")])
assert CAPTURE_COUNTERS_DTYPE.itemsize == sizeof(capture_counters_t)
assert REPLAY_COUNTERS_DTYPE.itemsize == sizeof(replay_counters_t)

#: Link types (tcpdump.org/linktypes.html) the engine writes and the replay accepts.
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
#: Raw IP link types a tun takes (12 and 14 are DLT_RAW as some systems wrote it into pcap files).
RAW_IP_LINKTYPES = frozenset({LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, 12, 14})
INBOUND = EPB_INBOUND
OUTBOUND = EPB_OUTBOUND
_DIRECTIONS = {"in": EPB_INBOUND, "out": EPB_OUTBOUND, "both": EPB_INBOUND | EPB_OUTBOUND}
#: Longest packet a record may claim (libpcap's MAXIMUM_SNAPLEN): a longer one means corruption.
MAX_CAPLEN = CAPLEN_MAX
DEFAULT_BUFFER = 8 << 20
MIN_BUFFER = 64 << 10
MAX_BUFFER = 1 << 30

cdef enum:
    CAPLEN_MAX = 262144         # libpcap's MAXIMUM_SNAPLEN: a record claiming more is corrupt
    NS_PER_S = 1000000000
    BT_SHB = 0x0A0D0D0A
    BT_IDB = 1
    BT_PB = 2                   # obsolete Packet Block
    BT_SPB = 3
    BT_ISB = 5
    BT_EPB = 6
    BOM = 0x1A2B3C4D
    EPB_FIXED = 28              # type, length, interface, ts high/low, caplen, origlen
    EPB_TRAILER = 16            # epb_flags option (8), end of options (4), length (4)
    WRAP_MARKER = 0
    LINGER_NS = 1000000         # a woken drain thread lets a millisecond of blocks gather
    IDLE_POLL_MS = 1000
    MAX_SLEEP_NS = 10000000     # replay: sleep at most 10 ms at a time (stop() is seen)
    POLL_MS = 100

# Drain results (capture_drain, capture_serve): >= 0; a failed write is -errno.
cdef enum:
    DRAIN_EMPTY = 0
    DRAIN_ROTATE = 1
    DRAIN_STOPPED = 2

# Why a file could not be read (PcapReader.error).
cdef enum ReadError:
    READ_OK = 0
    READ_TRUNCATED = 1
    READ_BAD_BLOCK = 2
    READ_BAD_LENGTH = 3
    READ_NO_INTERFACE = 4
    READ_TOO_MANY_INTERFACES = 5
    READ_BAD_SECTION = 6
    READ_CAPLEN_OVER_ORIG = 7

_READ_ERRORS = {
    READ_TRUNCATED: "truncated: the record at byte {offset} runs past the end of the file",
    READ_BAD_BLOCK: "corrupt: the block at byte {offset} has an impossible length",
    READ_BAD_LENGTH: "corrupt: the packet at byte {offset} claims more bytes than its record",
    READ_NO_INTERFACE: "corrupt: the packet at byte {offset} names an interface never described",
    READ_TOO_MANY_INTERFACES: f"more than {MAX_INTERFACES} interfaces in one section (byte "
                              "{offset})",
    READ_BAD_SECTION: "corrupt: the section header at byte {offset} has no valid byte-order "
                      "magic or version",
    READ_CAPLEN_OVER_ORIG: "corrupt: the packet at byte {offset} holds more bytes than its "
                           "original length",
}


cdef uint64_t realtime_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec


def realtime():
    """CLOCK_REALTIME in nanoseconds: the clock of capture timestamps."""
    return realtime_ns()


# -- capture: blocks into the buffer -----------------------------------------------------------

cdef inline void store32(uint8_t *p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)


cdef inline uint32_t load32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


# Appends one Enhanced Packet Block at *head (the caller's running copy); returns 1, or 0 when
# it does not fit the space left (``tail`` as the drain thread last published it).
@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline int put_epb(PcapngWriter w, uint64_t *head, uint64_t tail, uint32_t ifidx,
                        const uint8_t *frame, uint32_t length, uint32_t flags,
                        uint64_t ts_ns) noexcept nogil:
    cdef uint32_t caplen = length if length < w.snaplen else w.snaplen
    cdef uint32_t padded = (caplen + 3) & ~3u
    cdef uint32_t total = EPB_FIXED + padded + EPB_TRAILER
    cdef uint64_t pos = head[0] & (w.buffer_size - 1)
    cdef uint64_t skip = 0
    cdef uint8_t *b
    if pos + total > w.buffer_size:
        skip = w.buffer_size - pos           # a wrap marker, then the block at offset 0
    if head[0] - tail + skip + total > w.buffer_size:
        return 0
    if skip:
        store32(w.buf + pos, WRAP_MARKER)
        head[0] += skip
        pos = 0
    b = w.buf + pos
    store32(b, BT_EPB)
    store32(b + 4, total)
    store32(b + 8, ifidx)
    store32(b + 12, <uint32_t>(ts_ns >> 32))
    store32(b + 16, <uint32_t>ts_ns)
    store32(b + 20, caplen)
    store32(b + 24, length)
    memcpy(b + EPB_FIXED, frame, caplen)
    memset(b + EPB_FIXED + caplen, 0, padded - caplen)
    b += EPB_FIXED + padded
    store32(b, 2 | (4 << 16))                # option epb_flags (code 2, length 4), host order
    store32(b + 4, flags)
    store32(b + 8, 0)                        # opt_endofopt
    store32(b + 12, total)
    head[0] += total
    w.counters[ifidx].packets += 1
    w.counters[ifidx].bytes += caplen
    return 1


cdef uint32_t capture_batch(PcapngWriter w, uint32_t ifidx, PacketRing ring, uint32_t first,
                            uint32_t n, uint32_t flags, uint64_t ts_ns) noexcept nogil:
    cdef uint64_t head, tail
    cdef uint32_t k, s, length, captured = 0
    cdef int nseg
    cdef const uint8_t *hdr
    cdef capture_counters_t *c = &w.counters[ifidx]
    if n == 0:
        return 0
    pthread_mutex_lock(&w.lock)
    if te_atomic_load_int(&w.failed) or te_atomic_load_int(&w.stopping):
        c.dropped += n
        pthread_mutex_unlock(&w.lock)
        return 0
    head = w.head
    tail = te_atomic_load_u64(&w.tail)
    for k in range(n):
        length = ring_len(ring, first + k)[0]
        if not ring_slot_ok(ring, first + k):   # the ring's safety boundary: never read past
            c.dropped += 1
            continue
        if w.vnet[ifidx]:
            hdr = ring_hdr(ring, first + k)
            if hdr[1] != VNET_GSO_NONE:
                c.superframes += 1
            # segmenting: a superframe becomes its segments, and a partial checksum (the
            # kernel's NEEDS_CSUM) is completed, as on a wire
            if w.segment and (hdr[1] != VNET_GSO_NONE or hdr[0] & VNET_F_NEEDS_CSUM):
                w.scratch.head = 0
                w.scratch.tail = 0
                nseg = gso_segment(hdr, ring_frame(ring, first + k), length, w.l2[ifidx],
                                   w.scratch, GSO_OUT_FULL_CSUM)
                if nseg > 0:
                    for s in range(<uint32_t>nseg):
                        if not put_epb(w, &head, tail, ifidx, ring_frame(w.scratch, s),
                                       ring_len(w.scratch, s)[0], flags, ts_ns):
                            c.dropped += 1
                    captured += 1
                    continue
                if hdr[1] != VNET_GSO_NONE:
                    c.whole += 1
        if put_epb(w, &head, tail, ifidx, ring_frame(ring, first + k), length, flags, ts_ns):
            captured += 1
        else:
            c.dropped += 1
    if head != w.head:
        te_atomic_store_u64(&w.head, head)
        te_atomic_fence()                     # head published before we look at ``sleeping``
        if te_atomic_load_int(&w.sleeping) and te_atomic_exchange_int(&w.sleeping, 0):
            wake(w.wake_fd)
    pthread_mutex_unlock(&w.lock)
    return captured


cdef inline void wake(int fd) noexcept nogil:
    cdef uint64_t one = 1
    write(fd, &one, 8)                        # EAGAIN: the counter is already non-zero


# -- capture: the buffer to the file ------------------------------------------------------------

# Writes ``size`` bytes; returns 0 or the errno of the failed write.
cdef int write_all(int fd, const uint8_t *p, uint64_t size) noexcept nogil:
    cdef ssize_t done
    while size:
        done = write(fd, p, size)
        if done < 0:
            if errno == EINTR:
                continue
            return errno
        p += done
        size -= <uint64_t>done
    return 0


# Writes whole blocks from the buffer to w.fd until it is empty, or until the file has reached
# rotate_bytes (at least one packet block in each file). Returns DRAIN_EMPTY, DRAIN_ROTATE or
# -errno.
cdef int capture_drain(PcapngWriter w) noexcept nogil:
    cdef uint64_t head, tail, pos, span, blen
    cdef int err
    cdef bint full
    while True:
        head = te_atomic_load_u64(&w.head)
        tail = w.tail
        if tail == head:
            return DRAIN_EMPTY
        pos = tail & (w.buffer_size - 1)
        if load32(w.buf + pos) == WRAP_MARKER:
            te_atomic_store_u64(&w.tail, tail + (w.buffer_size - pos))
            continue
        span = 0
        full = False
        while tail + span < head and pos + span < w.buffer_size:
            if load32(w.buf + pos + span) == WRAP_MARKER:
                break
            blen = load32(w.buf + pos + span + 4)
            if w.rotate_bytes and w.file_bytes + span + blen > w.rotate_bytes and \
                    (span or w.file_blocks):
                full = True
                break
            span += blen
            w.file_blocks += 1
        if span:
            err = write_all(w.fd, w.buf + pos, span)
            if err:
                return -err
            w.file_bytes += span
            te_atomic_store_u64(&w.tail, tail + span)
        if full:
            return DRAIN_ROTATE


# The drain thread's loop: drains, sleeps on wake_fd while the buffer is empty, and returns
# DRAIN_ROTATE (a new file is due), DRAIN_STOPPED (stopping and nothing left) or -errno.
cdef int capture_serve(PcapngWriter w) noexcept nogil:
    cdef int rc
    cdef uint64_t drained
    cdef pollfd pfd
    pfd.fd = w.wake_fd
    pfd.events = POLLIN
    while True:
        rc = capture_drain(w)
        if rc != DRAIN_EMPTY:
            return rc
        if te_atomic_load_int(&w.stopping):
            # the producers have stopped (stop() is called after them): what they wrote is in
            rc = capture_drain(w)
            return rc if rc != DRAIN_EMPTY else DRAIN_STOPPED
        te_atomic_exchange_int(&w.sleeping, 1)   # a full barrier, then look at head
        if te_atomic_load_u64(&w.head) != w.tail:
            te_atomic_store_int(&w.sleeping, 0)
            continue
        poll(&pfd, 1, IDLE_POLL_MS)
        read(w.wake_fd, &drained, 8)
        te_atomic_store_int(&w.sleeping, 0)
        if not te_atomic_load_int(&w.stopping):
            sleep_until(monotonic_ns() + LINGER_NS)     # let a few batches gather


# -- capture: one device on its own ------------------------------------------------------------

# Reads batches from ``fd`` into ``ring`` and captures them as interface ``ifidx`` until
# ``limit`` frames, ``deadline`` (CLOCK_MONOTONIC ns, 0 = none) or a stop request; returns the
# frames read, with 0 or the errno that ended the run in *err.
cdef uint64_t capture_run(PcapngWriter w, uint32_t ifidx, PacketRing ring, BatchIO io, int fd,
                          bint vnet_hdr, uint32_t budget, uint64_t limit, uint64_t deadline,
                          int *err) noexcept nogil:
    cdef uint64_t total = 0, now, until
    cdef uint32_t n, want
    cdef int got
    cdef uint64_t drained
    cdef pollfd pfds[2]
    err[0] = 0
    pfds[0].fd = fd
    pfds[0].events = POLLIN
    pfds[1].fd = w.stop_fd
    pfds[1].events = POLLIN
    while not w.stop_requested and total < limit:
        want = budget
        if want > limit - total:
            want = <uint32_t>(limit - total)
        ring.head = 0
        ring.tail = 0
        n = ring_recv_via(io, fd, ring, want, vnet_hdr, err)
        if n:
            capture_batch(w, ifidx, ring, 0, n, EPB_INBOUND, realtime_ns())
            total += n
        if err[0]:
            break
        now = monotonic_ns()
        if deadline and now >= deadline:
            break
        if n:
            continue
        until = now + POLL_MS * 1000000ULL
        if deadline and deadline < until:
            until = deadline
        got = wait_or_stop(pfds, now, until)
        if got < 0:
            err[0] = errno
            break
        if got:
            break
    read(w.stop_fd, &drained, 8)
    w.stop_requested = 0
    return total


# -- blocks built once per file (Python) -------------------------------------------------------

def _option(code, value):
    pad = (-len(value)) % 4
    return struct.pack("=HH", code, len(value)) + value + b"\0" * pad


def _block(block_type, body):
    total = 12 + len(body)
    return struct.pack("=II", block_type, total) + body + struct.pack("=I", total)


def _options(*options):
    return b"".join(options) + (struct.pack("=HH", 0, 0) if options else b"")


def _ts_option(code, ts_ns):
    return _option(code, struct.pack("=II", ts_ns >> 32, ts_ns & 0xFFFFFFFF))


def section_header(comment=None, application="tapengine"):
    """A Section Header Block (host byte order, section length unknown)."""
    opts = [_option(4, application.encode())]
    if comment:
        opts.append(_option(1, comment.encode()))
    return _block(BT_SHB, struct.pack("=IHHq", BOM, 1, 0, -1) + _options(*opts))


def interface_description(name, linktype, snaplen):
    """An Interface Description Block: ``if_name`` and ``if_tsresol`` 9 (nanoseconds)."""
    return _block(BT_IDB, struct.pack("=HHI", linktype, 0, snaplen)
                  + _options(_option(2, name.encode()), _option(9, b"\x09")))


def interface_statistics(ifidx, ts_ns, *, start_ns=None, received=None, if_dropped=None,
                         os_dropped=None, delivered=None, comment=None):
    """An Interface Statistics Block: isb_starttime/endtime, isb_ifrecv, isb_ifdrop,
    isb_osdrop, isb_usrdeliv for the counts given (None: left out)."""
    opts = []
    if comment:
        opts.append(_option(1, comment.encode()))
    if start_ns is not None:
        opts.append(_ts_option(2, start_ns))
    opts.append(_ts_option(3, ts_ns))
    for code, value in ((4, received), (5, if_dropped), (7, os_dropped), (8, delivered)):
        if value is not None:
            opts.append(_option(code, struct.pack("=Q", value)))
    return _block(BT_ISB, struct.pack("=III", ifidx, ts_ns >> 32, ts_ns & 0xFFFFFFFF)
                  + _options(*opts))


def rotated_name(path, index):
    """The name of the ``index``-th file of a rotated capture: ``path``, ``path1``, ... (tcpdump
    -C's names)."""
    return os.fspath(path) if index == 0 else f"{os.fspath(path)}{index}"


@cython.final
cdef class PcapngWriter:
    """A pcapng file being captured into, its buffer and its drain thread.

    ``interfaces`` is a list of ``(name, linktype, vnet_hdr)``: one Interface Description Block
    each (``linktype`` LINKTYPE_ETHERNET for a tap, LINKTYPE_RAW for a tun; ``vnet_hdr``: its
    frames carry a virtio-net header, so superframes are recognised). ``snaplen`` cuts every
    frame; ``segment`` writes a GSO superframe as the segments a wire would carry (else whole);
    ``rotate_bytes`` starts a new file once one reaches that size; ``buffer_size`` bytes (rounded
    up to a power of two) are buffered before frames are dropped. The file is created at once
    (mode 0644, truncated).
    """

    def __cinit__(self, path, interfaces, *, snaplen=262144, bint segment=True,
                  rotate_bytes=0, buffer_size=DEFAULT_BUFFER, comment=None):
        self.fd = -1
        self.wake_fd = -1
        self.stop_fd = -1
        interfaces = list(interfaces)
        if not 1 <= len(interfaces) <= MAX_INTERFACES:
            raise ValueError(f"a capture has 1 to {MAX_INTERFACES} interfaces, "
                             f"not {len(interfaces)}")
        if not 1 <= snaplen <= MAX_CAPLEN:
            raise ValueError(f"snaplen must be 1 to {MAX_CAPLEN}, not {snaplen}")
        if not MIN_BUFFER <= buffer_size <= MAX_BUFFER:
            raise ValueError(f"buffer_size must be {MIN_BUFFER} to {MAX_BUFFER} bytes, "
                             f"not {buffer_size}")
        if rotate_bytes < 0:
            raise ValueError(f"rotate_bytes must be >= 0, not {rotate_bytes}")
        cdef void *mem = NULL
        cdef uint64_t size = 1
        cdef Py_ssize_t i
        while size < <uint64_t>buffer_size:
            size <<= 1
        self.buffer_size = size
        self.snaplen = snaplen
        self.segment = segment
        self.rotate_bytes = rotate_bytes
        self.ninterfaces = len(interfaces)
        self.path = os.fspath(path)
        self.comment = comment
        self.interfaces = []
        for i, (name, linktype, vnet_hdr) in enumerate(interfaces):
            if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_RAW):
                raise ValueError(f"interface {name!r}: link type {linktype} is not Ethernet "
                                 f"({LINKTYPE_ETHERNET}) nor raw IP ({LINKTYPE_RAW})")
            self.l2[i] = linktype == LINKTYPE_ETHERNET
            self.vnet[i] = bool(vnet_hdr)
            self.interfaces.append((str(name), int(linktype)))
        if posix_memalign(&mem, 4096, size) != 0:
            raise MemoryError(f"cannot allocate a {size}-byte capture buffer")
        self.buf = <uint8_t *>mem
        self._counters_array = np.zeros(self.ninterfaces, CAPTURE_COUNTERS_DTYPE)
        self.counters = <capture_counters_t *><size_t>(
            self._counters_array.__array_interface__["data"][0])
        self.scratch = PacketRing(SEGMENT_SLOTS, SEGMENT_SLOT_SIZE)
        if pthread_mutex_init(&self.lock, NULL) != 0:
            raise MemoryError("cannot initialise the capture lock")
        self.lock_ready = True
        self.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.wake_fd < 0:
            raise_errno(errno, "creating the capture's eventfd")
        self.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.stop_fd < 0:
            raise_errno(errno, "creating the capture's eventfd")
        self.files = []
        self.error = None
        self.started_ns = realtime_ns()
        self._open_next()
        self._thread = threading.Thread(target=self._drain_main, name="tapengine-pcap",
                                        daemon=True)
        self._thread.start()

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        if self.wake_fd >= 0:
            close(self.wake_fd)
        if self.stop_fd >= 0:
            close(self.stop_fd)
        if self.lock_ready:
            pthread_mutex_destroy(&self.lock)
        free(self.buf)

    def _header(self):
        return section_header(self.comment) + b"".join(
            interface_description(name, linktype, self.snaplen)
            for name, linktype in self.interfaces)

    def _open_next(self):
        # a new file (the first, or the next of a rotation) with its section and interfaces
        name = rotated_name(self.path, len(self.files))
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            header = self._header()
            os.write(fd, header)
        except BaseException:
            os.close(fd)
            raise
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd
        self.file_bytes = len(header)
        self.file_blocks = 0
        self.files.append(name)

    def _drain_main(self):
        cdef int rc
        while True:
            with nogil:
                rc = capture_serve(self)
            if rc == DRAIN_ROTATE:
                try:
                    self._open_next()
                    continue
                except OSError as err:
                    self.error = err
                    rc = -(err.errno or EINVAL)
            elif rc < 0:
                self.error = OSError(-rc, f"writing {self.files[-1]}: {os.strerror(-rc)}")
            if rc < 0:
                te_atomic_store_int(&self.failed, -rc)
            return

    # -- counters ----------------------------------------------------------------------------

    @property
    def counters(self):
        """Per interface (CAPTURE_COUNTERS_DTYPE): blocks and bytes written into the buffer,
        frames dropped, superframes seen and those written whole."""
        view = self._counters_array.view()
        view.flags.writeable = False
        return view

    @property
    def buffered(self):
        """Bytes waiting in the buffer for the drain thread."""
        return te_atomic_load_u64(&self.head) - te_atomic_load_u64(&self.tail)

    @property
    def closed(self):
        return self.fd < 0

    # -- Python entry points -----------------------------------------------------------------

    def capture(self, PacketRing ring not None, first, count, *, int interface=0,
                int flags=EPB_INBOUND, ts_ns=None):
        """Capture slots [first, first + count) of ``ring`` as ``interface``; returns the frames
        captured (the rest were dropped: the buffer was full)."""
        self._check_interface(interface)
        if count < 0 or count > ring.nslots:
            raise ValueError(f"count must be 0 to {ring.nslots}, not {count}")
        cdef uint64_t ts = realtime_ns() if ts_ns is None else ts_ns
        cdef uint32_t cfirst = ring_index(first), ccount = count, got
        with nogil:
            got = capture_batch(self, interface, ring, cfirst, ccount, flags, ts)
        return got

    cdef int _check_interface(self, int interface) except -1:
        if self.fd < 0:
            raise ValueError("the capture is closed")
        if not 0 <= interface < <int>self.ninterfaces:
            raise ValueError(f"interface must be 0 to {self.ninterfaces - 1}, not {interface}")
        return 0

    def run(self, fd, PacketRing ring not None, *, int interface=0, count=None, duration=None,
            vnet_hdr=None, BatchIO io=None, int budget=64):
        """Read ``fd`` (a tun/tap queue) into ``ring`` and capture every frame as ``interface``
        until ``count`` frames, ``duration`` seconds or ``stop()``; returns the frames read."""
        self._check_interface(interface)
        cdef int cfd = fd_of(fd)
        cdef bint cvnet = bool(getattr(fd, "vnet_hdr", False)) if vnet_hdr is None else vnet_hdr
        cdef uint64_t limit = UINT64_MAX if count is None else count
        cdef uint64_t deadline = 0
        cdef uint32_t cbudget = min(max(budget, 1), ring.nslots)
        cdef uint64_t got
        cdef int err = 0
        if duration is not None:
            deadline = monotonic_ns() + <uint64_t>(duration * NS_PER_S)
        if io is not None:
            io.check()
        use_begin(ring, io)
        self._users += 1
        try:
            with nogil:
                got = capture_run(self, interface, ring, io, cfd, cvnet, cbudget, limit,
                                  deadline, &err)
        finally:
            self._users -= 1
            use_end(ring, io)
        if err:
            raise_errno(err, "reading the device to capture", got)
        return got

    def stop(self):
        """Make a running ``run()`` return (from any thread)."""
        cdef uint64_t one = 1
        self.stop_requested = 1
        if self.stop_fd >= 0:
            write(self.stop_fd, &one, 8)

    def close(self, stats=None):
        """Write what is buffered, then an Interface Statistics Block per interface, and close
        the file. ``stats`` maps an interface index to a dict of ``received``, ``if_dropped``
        (the engine's own drops) for the block; the buffer's drops go in ``isb_osdrop`` and the
        blocks written in ``isb_usrdeliv``. Returns the files written. Raises the drain
        thread's write error, if any (the file is closed all the same). Closing twice is a
        no-op; refused (``BufferError``) while ``run()`` or a stage uses the capture."""
        if self.fd < 0:
            return list(self.files)
        if self._users:
            raise BufferError("the capture is in use (run() or a forwarding stage): stop it "
                              "first")
        te_atomic_store_int(&self.stopping, 1)
        wake(self.wake_fd)
        self._thread.join()
        try:
            if self.error is None:
                now = realtime_ns()
                blocks = []
                for i in range(self.ninterfaces):
                    extra = (stats or {}).get(i, {})
                    c = self._counters_array[i]
                    blocks.append(interface_statistics(
                        i, now, start_ns=self.started_ns, received=extra.get("received"),
                        if_dropped=extra.get("if_dropped"), os_dropped=int(c["dropped"]),
                        delivered=int(c["packets"])))
                os.write(self.fd, b"".join(blocks))
        finally:
            os.close(self.fd)
            self.fd = -1
        if self.error is not None:
            raise self.error
        return list(self.files)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@cython.auto_pickle(False)
cdef class CaptureStage(Stage):
    """A forwarding stage that captures every frame the engine receives and sends into
    ``writer``: the port's index is the interface. Inbound: each received batch as the stage
    sees it (place it first to capture frames as they arrived), timestamped right after it was
    read. Outbound: each run of frames a forwarder sent out of a port, timestamped at the send
    (the forwarder calls ``capture_tx`` once it holds this stage: ``add_stage`` registers it
    through ``Forwarder.set_capture``); software-segmented superframes are recorded as the
    segments the wire carried. ``direction`` is ``"in"``, ``"out"`` or ``"both"`` (default). It
    decides nothing (verdicts stay as they are). ``close(stats)`` closes the writer."""

    def __init__(self, PcapngWriter writer not None, name="pcap", direction="both"):
        Stage.__init__(self, name)
        writer._check_interface(0)
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(_DIRECTIONS)}, "
                             f"not {direction!r}")
        self.directions = _DIRECTIONS[direction]
        self.writer = writer
        writer._users += 1               # the writer cannot be closed under a running engine

    def attach(self, port_names):
        if len(port_names) > self.writer.ninterfaces:
            raise ValueError(f"the capture describes {self.writer.ninterfaces} interfaces, the "
                             f"engine has {len(port_names)} ports")

    cdef void _record(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                      uint32_t direction) noexcept nogil:
        # One writer path for both directions: the EPB's direction flag is the only difference.
        if self.directions & direction and 0 <= port < <int>self.writer.ninterfaces:
            capture_batch(self.writer, <uint32_t>port, ring, first, n, direction, realtime_ns())

    cdef int process(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                     int32_t *verdict) noexcept nogil:
        self._record(port, ring, first, n, EPB_INBOUND)
        return 0

    cdef void capture_tx(self, int port, PacketRing ring, uint32_t first,
                         uint32_t n) noexcept nogil:
        self._record(port, ring, first, n, EPB_OUTBOUND)

    def close(self, stats=None):
        """Close the writer (see PcapngWriter.close); returns the files written. Call it once
        the engine has stopped."""
        if self.writer._users and not self.released:
            self.writer._users -= 1
            self.released = True
        return self.writer.close(stats)


# -- reading -------------------------------------------------------------------------------------

cdef inline uint32_t rd32(PcapReader r, const uint8_t *p) noexcept nogil:
    cdef uint32_t v = load32(p)
    if r.swapped:
        v = ((v >> 24) | ((v >> 8) & 0xFF00) | ((v << 8) & 0xFF0000) | (v << 24))
    return v


cdef inline uint16_t rd16(PcapReader r, const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    if r.swapped:
        v = <uint16_t>((v >> 8) | (v << 8))
    return v


cdef inline int fail(PcapReader r, int code, uint64_t offset) noexcept nogil:
    r.error = code
    r.error_offset = offset
    return -1


# Nanoseconds from a pcapng timestamp in units of if_tsresol ``res``.
cdef uint64_t ts_to_ns(uint64_t ts, uint8_t res) noexcept nogil:
    cdef uint64_t scale = 1
    cdef uint32_t _, exp = res & 0x7F
    if res & 0x80:                      # 2^-exp seconds
        if exp >= 64:
            return 0
        return (ts >> exp) * NS_PER_S + <uint64_t>(<double>(ts & ((1ULL << exp) - 1))
                                                   * 1e9 / <double>(1ULL << exp))
    if exp <= 9:
        for _ in range(9 - exp):
            scale *= 10
        return ts * scale
    if exp > 19:
        return 0
    for _ in range(exp - 9):
        scale *= 10
    return ts // scale


# Reads a Section Header Block at r.pos: byte order, then drops the interfaces of the last
# section. Returns 0 or -1 (r.error set).
cdef int read_shb(PcapReader r) noexcept nogil:
    cdef const uint8_t *b = r.data + r.pos
    cdef uint32_t bom
    if r.size - r.pos < 28:
        return fail(r, READ_TRUNCATED, r.pos)
    bom = load32(b + 8)
    if bom == BOM:
        r.swapped = False
    elif bom == 0x4D3C2B1A:
        r.swapped = True
    else:
        return fail(r, READ_BAD_SECTION, r.pos)
    if rd16(r, b + 12) != 1:
        return fail(r, READ_BAD_SECTION, r.pos)
    r.nif = 0
    return 0


# Options of the Interface Description Block at ``b`` (``blen`` bytes): if_tsresol.
cdef uint8_t idb_tsresol(PcapReader r, const uint8_t *b, uint32_t blen) noexcept nogil:
    cdef uint32_t off = 16, code, olen
    while off + 4 <= blen - 4:
        code = rd16(r, b + off)
        olen = rd16(r, b + off + 2)
        if code == 0 or off + 4 + olen > blen - 4:
            break
        if code == 9 and olen >= 1:
            return b[off + 4]
        off += 4 + ((olen + 3) & ~3u)
    return 6


cdef int reader_next_pcap(PcapReader r, pcap_packet_t *pkt) noexcept nogil:
    cdef const uint8_t *b
    cdef uint32_t caplen
    if r.pos == r.size:
        return 0
    if r.size - r.pos < 16:
        return fail(r, READ_TRUNCATED, r.pos)
    b = r.data + r.pos
    caplen = rd32(r, b + 8)
    if caplen > CAPLEN_MAX:
        return fail(r, READ_BAD_LENGTH, r.pos)
    if r.size - r.pos - 16 < caplen:
        return fail(r, READ_TRUNCATED, r.pos)
    pkt.data = b + 16
    pkt.caplen = caplen
    pkt.origlen = rd32(r, b + 12)
    if caplen > pkt.origlen:    # a capture keeps at most what the packet had
        return fail(r, READ_CAPLEN_OVER_ORIG, r.pos)
    pkt.ifidx = 0
    pkt.linktype = r.pcap_linktype
    pkt.ts_ns = <uint64_t>rd32(r, b) * NS_PER_S + <uint64_t>rd32(r, b + 4) * r.pcap_tsmul
    r.pos += 16 + caplen
    return 1


cdef int reader_next(PcapReader r, pcap_packet_t *pkt) noexcept nogil:
    cdef const uint8_t *b
    cdef uint32_t btype, blen, ifidx, caplen
    r.error = READ_OK
    if not r.pcapng:
        return reader_next_pcap(r, pkt)
    while r.pos < r.size:
        if r.size - r.pos < 12:
            return fail(r, READ_TRUNCATED, r.pos)
        b = r.data + r.pos
        btype = load32(b)
        if btype == BT_SHB:
            if read_shb(r) < 0:
                return -1
        blen = rd32(r, b + 4)
        if blen < 12 or blen % 4:
            return fail(r, READ_BAD_BLOCK, r.pos)
        if blen > r.size - r.pos:
            return fail(r, READ_TRUNCATED, r.pos)
        if rd32(r, b + blen - 4) != blen:
            return fail(r, READ_BAD_BLOCK, r.pos)
        btype = rd32(r, b)
        if btype == BT_IDB:
            if blen < 20:
                return fail(r, READ_BAD_BLOCK, r.pos)
            if r.nif >= MAX_INTERFACES:
                return fail(r, READ_TOO_MANY_INTERFACES, r.pos)
            r.if_linktype[r.nif] = rd16(r, b + 8)
            r.if_snaplen[r.nif] = rd32(r, b + 12)
            r.if_tsresol[r.nif] = idb_tsresol(r, b, blen)
            r.nif += 1
        elif btype == BT_EPB or btype == BT_PB:
            if blen < 32:
                return fail(r, READ_BAD_BLOCK, r.pos)
            ifidx = rd32(r, b + 8) if btype == BT_EPB else rd16(r, b + 8)
            if ifidx >= r.nif:
                return fail(r, READ_NO_INTERFACE, r.pos)
            caplen = rd32(r, b + 20)
            if caplen > blen - 32:
                return fail(r, READ_BAD_LENGTH, r.pos)
            pkt.data = b + 28
            pkt.caplen = caplen
            pkt.origlen = rd32(r, b + 24)
            if caplen > pkt.origlen:
                return fail(r, READ_CAPLEN_OVER_ORIG, r.pos)
            pkt.ifidx = ifidx
            pkt.linktype = r.if_linktype[ifidx]
            pkt.ts_ns = ts_to_ns((<uint64_t>rd32(r, b + 12) << 32) | rd32(r, b + 16),
                                 r.if_tsresol[ifidx])
            r.pos += blen
            return 1
        elif btype == BT_SPB:
            if blen < 16:
                return fail(r, READ_BAD_BLOCK, r.pos)
            if r.nif == 0:
                return fail(r, READ_NO_INTERFACE, r.pos)
            pkt.origlen = rd32(r, b + 8)
            caplen = pkt.origlen
            if r.if_snaplen[0] and caplen > r.if_snaplen[0]:
                caplen = r.if_snaplen[0]
            if caplen > blen - 16:
                caplen = blen - 16
            pkt.data = b + 12
            pkt.caplen = caplen
            pkt.ifidx = 0
            pkt.linktype = r.if_linktype[0]
            pkt.ts_ns = 0
            r.pos += blen
            return 1
        r.pos += blen
    return 0


@cython.final
cdef class PcapReader:
    """A pcap or pcapng file, mapped read-only. Raises ``PcapFormatError`` (a ValueError) for
    a file that is neither; iterate for ``(ts_ns, interface, data, orig_len)``."""

    def __cinit__(self, path):
        self.path = os.fspath(path)
        cdef const uint8_t[::1] view
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise PcapFormatError(f"{self.path}: empty file, not a pcap or pcapng capture")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = self._map
        self._view = view
        self.data = &view[0]
        self.size = size
        self._parse_header()

    cdef int _parse_header(self) except -1:
        cdef uint32_t magic
        if self.size < 4:
            raise PcapFormatError(f"{self.path}: not a pcap or pcapng file (too short)")
        magic = load32(self.data)
        if magic == BT_SHB:
            self.pcapng = True
            if read_shb(self) < 0:
                self._raise()
            self.start = 0
        elif magic in (0xA1B2C3D4, 0xD4C3B2A1, 0xA1B23C4D, 0x4D3CB2A1):
            self.swapped = magic in (0xD4C3B2A1, 0x4D3CB2A1)
            self.pcap_tsmul = 1 if magic in (0xA1B23C4D, 0x4D3CB2A1) else 1000
            if self.size < 24:
                raise PcapFormatError(f"{self.path}: truncated: the pcap file header needs 24 "
                                      f"bytes, the file has {self.size}")
            self.pcap_snaplen = rd32(self, self.data + 16)
            self.pcap_linktype = rd32(self, self.data + 20) & 0xFFFF
            self.start = 24
        else:
            raise PcapFormatError(f"{self.path}: not a pcap or pcapng file (magic "
                                  f"{magic:#010x})")
        self.pos = self.start
        return 0

    cdef int _raise(self) except -1:
        raise PcapFormatError(f"{self.path}: " + _READ_ERRORS[self.error].format(
            offset=self.error_offset))

    def rewind(self):
        """Start again at the first packet."""
        self.pos = self.start
        self.nif = 0

    def scan(self):
        """Walk the whole file and check every record; returns ``{"packets": N, "linktypes":
        {linktype, ...}, "longest": caplen, "format": "pcap" | "pcapng"}``, or raises
        PcapFormatError naming the first bad record. The reader is rewound."""
        cdef pcap_packet_t pkt
        cdef uint64_t packets = 0
        cdef uint32_t longest = 0
        cdef int rc
        linktypes = set()
        self.rewind()
        while True:
            with nogil:
                rc = reader_next(self, &pkt)
            if rc < 0:
                self.rewind()
                self._raise()
            if rc == 0:
                break
            packets += 1
            longest = max(longest, pkt.caplen)
            linktypes.add(pkt.linktype)
        if not self.pcapng and not packets:
            linktypes.add(self.pcap_linktype)
        self.rewind()
        return {"packets": packets, "linktypes": linktypes, "longest": longest,
                "format": "pcapng" if self.pcapng else "pcap"}

    def __iter__(self):
        cdef pcap_packet_t pkt
        cdef int rc
        self.rewind()
        while True:
            rc = reader_next(self, &pkt)
            if rc < 0:
                self._raise()
            if rc == 0:
                return
            yield (pkt.ts_ns, pkt.ifidx, bytes(pkt.data[:pkt.caplen]), pkt.origlen)

    def close(self):
        self._view = None
        self.data = NULL
        self.size = 0
        self.pos = 0
        self.start = 0
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# -- replay ----------------------------------------------------------------------------------------

# Copies packets from the reader into free slots of rp.ring (after its tail) with their due
# times, looping over the file as asked. Returns 0, 1 at the end of the last pass, or -1 on a
# read error (rp.reader.error set).
cdef int replay_fill(Replayer rp) noexcept nogil:
    cdef pcap_packet_t pkt
    cdef uint32_t slot
    cdef int rc
    while rp.ring.tail - rp.ring.head < rp.batch:
        rc = reader_next(rp.reader, &pkt)
        if rc < 0:
            return -1
        if rc == 0:
            rp.counters.loops += 1
            if (rp.loops and rp.counters.loops >= rp.loops) or not rp.pass_packets:
                return 1                    # the last pass, or one that had nothing to send
            rp.pass_packets = 0
            rp.reader.pos = rp.reader.start
            rp.reader.nif = 0
            rp.anchored = False             # the next pass keeps its own timing
            continue
        if pkt.caplen > rp.ring.slot_size:
            rp.counters.too_long += 1
            continue
        slot = rp.ring.tail
        rp.pass_packets += 1
        memcpy(ring_fresh(rp.ring, slot), pkt.data, pkt.caplen)
        memset(ring_hdr(rp.ring, slot), 0, VNET_HDR_LEN)
        ring_len(rp.ring, slot)[0] = pkt.caplen
        rp.snapped[slot & rp.ring.mask] = pkt.caplen < pkt.origlen
        if rp.speed > 0:
            if not rp.anchored:
                rp.anchored = True
                rp.file_t0 = pkt.ts_ns
                rp.mono_t0 = monotonic_ns()
                if slot != rp.ring.head:
                    rp.mono_t0 = rp.due[(slot - 1) & rp.ring.mask]
            if pkt.ts_ns <= rp.file_t0:
                rp.due[slot & rp.ring.mask] = rp.mono_t0
            else:
                rp.due[slot & rp.ring.mask] = rp.mono_t0 + <uint64_t>(
                    <double>(pkt.ts_ns - rp.file_t0) / rp.speed)
        rp.ring.tail = slot + 1
    return 0


# Writes the file's packets to ``fd`` until the last pass ends, a stop request, or an error;
# returns packets written with 0 or the errno that ended the run in *err (a read error: -1 and
# *err == 0, the reader's error set).
cdef int64_t replay_run(Replayer rp, BatchIO io, int fd, bint vnet_hdr, int *err) noexcept nogil:
    cdef uint64_t now, wait
    cdef uint32_t pending, n, sent, i
    cdef int end = 0, rc
    cdef pollfd pfd
    err[0] = 0
    pfd.fd = fd
    pfd.events = POLLOUT
    rp.ring.head = 0
    rp.ring.tail = 0
    if rp.bucket.last_ns == 0:
        rp.bucket.last_ns = monotonic_ns()
    while not rp.stop_requested:
        if not end:
            rc = replay_fill(rp)
            if rc < 0:
                return -1
            end = rc
        pending = rp.ring.tail - rp.ring.head
        if pending == 0:
            break
        now = monotonic_ns()
        wait = 0
        if rp.bucket.rate:
            n = bucket_admit(&rp.bucket, rp.ring, rp.ring.head, pending, now)
            if n == 0:
                wait = bucket_wait_ns(&rp.bucket, rp.ring, rp.ring.head)
        elif rp.speed > 0:
            n = 0
            while n < pending and rp.due[(rp.ring.head + n) & rp.ring.mask] <= now:
                n += 1
            if n == 0:
                wait = rp.due[rp.ring.head & rp.ring.mask] - now
        else:
            n = pending
        if n == 0:
            sleep_until(now + (wait if wait < MAX_SLEEP_NS else MAX_SLEEP_NS))
            continue
        sent = ring_send_via(io, fd, rp.ring, rp.ring.head, n, vnet_hdr, err)
        bucket_spend(&rp.bucket, rp.ring, rp.ring.head, sent)
        for i in range(sent):
            rp.counters.bytes += ring_len(rp.ring, rp.ring.head + i)[0]
            rp.counters.snapped += rp.snapped[(rp.ring.head + i) & rp.ring.mask]
        if sent:
            rp.counters.packets += sent
            if rp.counters.first_ns == 0:
                rp.counters.first_ns = now
            rp.counters.last_ns = monotonic_ns()
        rp.ring.head += sent
        if err[0] == EINVAL or err[0] == EMSGSIZE or err[0] == EFAULT:
            rp.counters.failed += 1             # the device refused this one packet: skip it
            rp.ring.head += 1
            err[0] = 0
            continue
        if err[0]:
            break
        if sent < n and poll(&pfd, 1, 1) < 0 and errno != EINTR:
            err[0] = errno
            break
    rp.stop_requested = 0
    return <int64_t>rp.counters.packets


@cython.final
cdef class Replayer:
    """Writes ``reader``'s packets into a tun/tap (``l2``: a tap, Ethernet frames).

    Pacing: ``rate`` packets per second (bits with ``bits``) through the generator's token
    bucket; else ``speed`` > 0 follows the file's timestamps ``speed`` times faster; else (0)
    as fast as the device takes them. ``loops`` passes over the file (0: until ``stop()``).
    The file is scanned first: a bad record or a link type the device cannot take raises
    ``PcapFormatError`` before anything is written.
    """

    def __cinit__(self, PcapReader reader not None, *, bint l2, rate=0, bint bits=False,
                  double speed=1.0, loops=1, int batch=32, slot_size=65536 + 128):
        if not 1 <= batch <= 1024:
            raise ValueError(f"batch must be 1 to 1024, not {batch}")
        if speed < 0 or speed != speed:
            raise ValueError(f"speed must be >= 0, not {speed}")
        if loops < 0:
            raise ValueError(f"loops must be >= 0, not {loops}")
        if rate < 0:
            raise ValueError(f"rate must be >= 0, not {rate}")
        summary = reader.scan()
        wanted = {LINKTYPE_ETHERNET} if l2 else RAW_IP_LINKTYPES
        bad = sorted(summary["linktypes"] - wanted)
        if bad:
            kind = "a tap takes Ethernet frames (link type 1)" if l2 else \
                "a tun takes raw IP packets (link type 101, 228 or 229)"
            raise PcapFormatError(f"{reader.path}: link type {', '.join(map(str, bad))} does "
                                  f"not fit the device: {kind}")
        self.summary = summary
        self.reader = reader
        self.l2 = l2
        self.speed = 0.0 if rate else speed
        self.loops = loops
        self.batch = batch
        nslots = 1
        while nslots < 2 * batch:
            nslots <<= 1
        self.ring = PacketRing(nslots, slot_size)
        self._counters_array = np.zeros(1, REPLAY_COUNTERS_DTYPE)
        self.counters = <replay_counters_t *><size_t>(
            self._counters_array.__array_interface__["data"][0])
        self._due_array = np.zeros(nslots, np.uint64)
        self.due = <uint64_t *><size_t>(self._due_array.__array_interface__["data"][0])
        self._snapped_array = np.zeros(nslots, np.uint8)
        self.snapped = <uint8_t *><size_t>(self._snapped_array.__array_interface__["data"][0])
        longest = max(summary["longest"], 1)
        bucket_set(&self.bucket, rate, bits, None, (longest * 8) if bits else 1, batch)

    @property
    def counters(self):
        """REPLAY_COUNTERS_DTYPE: packets and bytes written, packets the device refused or
        that did not fit a slot, passes completed, first and last write (CLOCK_MONOTONIC), and
        packets written as the snapped stub the file holds (fewer bytes than they had)."""
        view = self._counters_array.view()
        view.flags.writeable = False
        return view

    def run(self, fd, *, vnet_hdr=None, BatchIO io=None):
        """Write the file into ``fd`` (a tun/tap queue) as configured; returns packets written.
        A device error raises OSError; a record that became unreadable, PcapFormatError."""
        cdef int cfd = fd_of(fd)
        cdef bint cvnet = bool(getattr(fd, "vnet_hdr", False)) if vnet_hdr is None else vnet_hdr
        cdef int err = 0
        cdef int64_t got
        if not self.summary["packets"]:
            return 0
        if io is not None:
            io.check()
        use_begin(self.ring, io)
        try:
            with nogil:
                got = replay_run(self, io, cfd, cvnet, &err)
        finally:
            use_end(self.ring, io)
        if got < 0:
            self.reader._raise()
        if err:
            raise_errno(err, "writing the replayed packets", got)
        return got

    def stop(self):
        """Make a running ``run()`` return within ~10 ms (from any thread)."""
        self.stop_requested = 1
