# cython: language_level=3, embedsignature=True
"""Batched tun/tap I/O through io_uring: one ``io_uring_enter`` carries a whole batch.

The same reads and writes as ``tapengine._batchio`` (one packet per read or write, one buffer:
the virtio-net header of a queue with IFF_VNET_HDR sits right in front of the frame in its slot),
queued as SQEs and submitted together. Raw system calls and our own header
(``pyx/includes/uring.h``); no liburing.

What the kernel does with them, and what this module relies on (checked by ``available()``):

- O_NONBLOCK on the fd is NOT enough: for a file that supports non-blocking I/O (a tun fd is a
  char device with FMODE_NOWAIT) io_uring retries an ``-EAGAIN`` read by arming a poll, so the
  read would stay pending and land in a ring slot later. Every SQE therefore carries
  ``RWF_NOWAIT``: a read with nothing queued completes at once with ``-EAGAIN``, and every SQE of
  a batch has completed when ``io_uring_enter`` returns, so no request outlives the call;
- SQEs are issued in submission order, inline, by the submitting thread: reads of one fd take the
  queue's packets in order. A read can find the queue empty (``-EAGAIN``) and the next one find a
  packet that arrived meanwhile: the packets after such a gap are moved down so the slots stay
  contiguous and ordered;
- writes are linked (``IOSQE_IO_LINK``, the default): when one fails, the kernel cancels every
  write after it, so exactly the packets before the failure went out, as with a write() loop.
  Links cost 6-13% of the send rate (bench/RESULTS.md): with ``linked_writes=False`` (what the
  engine's workers use) every write of a batch is tried and reports its own result, and when one
  fails and later ones went out, those are moved in front of the failed ones (slot contents
  moved, order kept on both sides), so a send still returns exactly how many packets from
  ``first`` on went out: the slots ``[first, first + n)``; the failed ones follow.

``register(fds, rings)`` (the forwarder does it for its ports while it runs) registers the fds
(``IORING_REGISTER_FILES``: no file reference taken and dropped per operation) and the rings'
slabs (``IORING_REGISTER_BUFFERS``: their pages pinned once, so reads and writes into them are
``READ_FIXED``/``WRITE_FIXED``, with no page pinning per operation). Anything not registered goes
through plain ``READ``/``WRITE``: registration is an optimisation, never a requirement.

Lengths as in ``tapengine._batchio``: a read asks for ``slot_size + 1`` frame bytes and a frame
longer than the slot is dropped and counted in ``ring.truncated`` (its slot closed like a gap); a
write stops before a slot whose length exceeds ``slot_size`` with ``EMSGSIZE``.

When io_uring is missing, disabled (``kernel.io_uring_disabled``), refused by a seccomp filter, or
``TAPENGINE_NO_URING=1`` is set, ``available()`` is false and ``open_batch_io()`` hands out the
readv/writev backend instead.
"""

cimport cython
from libc.errno cimport EAGAIN, EBADF, EBUSY, EINTR, EMSGSIZE, ENOMEM, ENOSYS, EPROTO, errno
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memmove, memset
from posix.mman cimport MAP_FAILED, MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.unistd cimport close

from tapengine._batchio cimport BatchIO, ReadvIO, ring_recv, ring_send
from tapengine._ring cimport (
    FRAME_OFFSET, PacketRing, ring_frame, ring_free, ring_fresh, ring_len, ring_off,
    ring_peer, ring_slot, ring_slot_ok, te_sockaddr,
)
from tapengine.includes.atomics cimport te_atomic_cas_u64, te_atomic_load_u64
from tapengine.includes.consts cimport VNET_HDR_LEN
from tapengine.includes.system cimport ECANCELED, iovec
from tapengine.syscall cimport fd_of
from tapengine.includes.uring cimport (
    TE_ENTER_GETEVENTS, TE_FEAT_NODROP, TE_FEAT_SINGLE_MMAP, TE_IO_URING_OP_SUPPORTED,
    TE_IOSQE_FIXED_FILE, TE_IOSQE_IO_LINK, TE_OFF_CQ_RING, TE_OFF_SQ_RING, TE_OFF_SQES,
    TE_OP_READ, TE_OP_READ_FIXED, TE_OP_WRITE, TE_OP_WRITE_FIXED, TE_PROBE_OPS,
    TE_REGISTER_BUFFERS, TE_REGISTER_ENABLE_RINGS, TE_REGISTER_FILES, TE_REGISTER_PROBE,
    TE_UNREGISTER_BUFFERS, TE_UNREGISTER_FILES,
    TE_RWF_NOWAIT, TE_SETUP_COOP_TASKRUN, TE_SETUP_DEFER_TASKRUN, TE_SETUP_R_DISABLED,
    TE_SETUP_SINGLE_ISSUER, te_cqe, te_io_uring_enter, te_io_uring_register, te_io_uring_setup,
    te_load_acquire, te_probe, te_sqe, te_store_release, te_thread_id, te_uring_params,
)
from tapengine.syscall cimport raise_errno

import os
import threading

MAX_ENTRIES = 4096

# Setup flags tried in order; the first the kernel accepts wins. SINGLE_ISSUER + DEFER_TASKRUN
# (6.1+) run completion work only inside our own io_uring_enter; the ring starts disabled so
# that the thread that first submits, not the one that created it, becomes its single issuer.
_SETUP_CHOICES = (
    TE_SETUP_SINGLE_ISSUER | TE_SETUP_DEFER_TASKRUN | TE_SETUP_R_DISABLED,
    TE_SETUP_COOP_TASKRUN,
    0,
)
_NEEDED_OPS = {"READ": TE_OP_READ, "WRITE": TE_OP_WRITE, "READ_FIXED": TE_OP_READ_FIXED,
               "WRITE_FIXED": TE_OP_WRITE_FIXED}

cdef enum:
    DIRECT_READS = 2        # read()s before a receive that expects one packet turns to io_uring

# The largest slot a ring has (tapengine._ring: FRAME_OFFSET + MAX_SLOT_SIZE + 1, to 64 bytes).
cdef size_t SPARE_SIZE = (FRAME_OFFSET + 65536 + 128 + 64) // 64 * 64


cdef class UringIO(BatchIO):
    """One io_uring for batched reads and writes on tun/tap fds; never shared between threads.

    ``entries`` (a power of two, at most 4096) bounds the SQEs of one submission; longer batches
    go in several. ``linked_writes`` (the default) stops a batch of writes at the first failure,
    as a write() loop does; without it every write is tried and the ones that went out are moved
    in front of the failed ones (see the module docstring): faster, same exact count, but a
    packet after a failure may go out (the forwarder's choice: it counts what failed anyway).
    ``direct_small`` (the engine's workers) sends a batch of one packet with write(), and reads
    a queue whose last batch was at most one packet with read() (two in a row turn to
    io_uring for the rest): at moderate rates, where each wakeup finds one packet, that costs
    less than an io_uring_enter with its SQEs.
    Everything is allocated here; nothing per packet. The first thread that moves packets
    through it owns it; any other thread is refused.
    """

    def __cinit__(self, *args, **kwargs):
        self.ring_fd = -1
        self.sq_map = self.cq_map = NULL
        self.sqes = NULL
        self.res = NULL
        self.spare = NULL
        self.nfiles = self.nbufs = 0
        self._registered = []
        self.register_error = ""

    def __init__(self, entries=256, *, bint linked_writes=True, bint direct_small=False):
        if self.ring_fd >= 0:
            raise RuntimeError("UringIO is already set up")
        if not isinstance(entries, int) or entries < 1 or entries > MAX_ENTRIES \
                or entries & (entries - 1):
            raise ValueError(f"entries must be a power of two from 1 to {MAX_ENTRIES}, "
                             f"not {entries!r}")
        if not available():
            raise OSError(ENOSYS, f"io_uring cannot be used here: {unavailable_reason()}")
        self._setup_any(entries)
        self._link_writes = linked_writes
        self._direct_small = direct_small

    cdef int _setup_any(self, uint32_t entries) except -1:
        # Returns 0 with the first setup flags the kernel accepts; raises the last refusal.
        last = None
        for flags in _SETUP_CHOICES:
            try:
                return self._setup(entries, flags)
            except OSError as exc:
                last = exc
        raise last

    def __dealloc__(self):
        self._free()

    cdef int _setup(self, uint32_t entries, uint32_t flags) except -1:
        # Returns 0 with the rings mapped; raises OSError (nothing left behind) otherwise.
        cdef te_uring_params p
        cdef size_t sq_len, cq_len
        cdef void *m
        cdef uint32_t i
        cdef uint32_t *array
        memset(&p, 0, sizeof(p))
        p.flags = flags
        fd = te_io_uring_setup(entries, &p)
        if fd < 0:
            raise_errno(errno, f"io_uring_setup({entries}, flags={flags:#x})")
        self.ring_fd = fd
        try:
            if not (p.features & TE_FEAT_NODROP):
                raise OSError(ENOSYS, "io_uring without IORING_FEAT_NODROP (kernel < 5.5)")
            sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t)
            cq_len = p.cq_off.cqes + p.cq_entries * sizeof(te_cqe)
            if p.features & TE_FEAT_SINGLE_MMAP:
                sq_len = cq_len = max(sq_len, cq_len)
            m = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     TE_OFF_SQ_RING)
            if m == MAP_FAILED:
                raise_errno(errno, "mapping the io_uring submission ring")
            self.sq_map, self.sq_map_len = <uint8_t *>m, sq_len
            if p.features & TE_FEAT_SINGLE_MMAP:
                self.cq_map, self.cq_map_len = self.sq_map, 0
            else:
                m = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                         TE_OFF_CQ_RING)
                if m == MAP_FAILED:
                    raise_errno(errno, "mapping the io_uring completion ring")
                self.cq_map, self.cq_map_len = <uint8_t *>m, cq_len
            self.sqes_len = p.sq_entries * sizeof(te_sqe)
            m = mmap(NULL, self.sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     TE_OFF_SQES)
            if m == MAP_FAILED:
                raise_errno(errno, "mapping the io_uring submission entries")
            self.sqes = <te_sqe *>m
            self.res = <int32_t *>calloc(p.sq_entries, sizeof(int32_t))
            self.spare = <uint8_t *>calloc(1, SPARE_SIZE)
            if self.res == NULL or self.spare == NULL:
                raise MemoryError("cannot allocate the io_uring batch state")
        except BaseException:
            self._free()
            raise
        self.sq_head = <uint32_t *>(self.sq_map + p.sq_off.head)
        self.sq_tail = <uint32_t *>(self.sq_map + p.sq_off.tail)
        self.sq_mask = (<uint32_t *>(self.sq_map + p.sq_off.ring_mask))[0]
        self.cq_head = <uint32_t *>(self.cq_map + p.cq_off.head)
        self.cq_tail = <uint32_t *>(self.cq_map + p.cq_off.tail)
        self.cq_mask = (<uint32_t *>(self.cq_map + p.cq_off.ring_mask))[0]
        self.cqes = <te_cqe *>(self.cq_map + p.cq_off.cqes)
        # SQE i always sits in array slot i: the indirection is set once, never touched again.
        array = <uint32_t *>(self.sq_map + p.sq_off.array)
        for i in range(p.sq_entries):
            array[i] = i
        self.local_tail = self.sq_tail[0]
        self.entries = p.sq_entries
        self.setup_flags = flags
        self.features = p.features
        self.enabled = False       # until the first thread that submits takes it
        self.dead = 0
        self._link_writes = True
        self._direct_small = False
        memset(self.hint, 0, sizeof(self.hint))
        return 0

    cdef void _free(self) noexcept:
        self._unregister()
        if self.sqes != NULL:
            munmap(self.sqes, self.sqes_len)
        if self.cq_map != NULL and self.cq_map != self.sq_map:
            munmap(self.cq_map, self.cq_map_len)
        if self.sq_map != NULL:
            munmap(self.sq_map, self.sq_map_len)
        if self.ring_fd >= 0:
            close(self.ring_fd)     # nothing is in flight: every batch completes before return
        free(self.res)
        free(self.spare)
        self.sqes = NULL
        self.sq_map = self.cq_map = NULL
        self.res = NULL
        self.spare = NULL
        self.ring_fd = -1

    cdef int _own(self) noexcept nogil:
        # Returns 0 when the calling thread may submit, else the errno to report. The first
        # caller becomes the owner, by one compare-and-swap, so two threads racing for a new
        # ring cannot both win; the winner enables a ring set up disabled (its single issuer).
        cdef uint64_t me = te_thread_id()
        cdef uint64_t holder
        if self.ring_fd < 0:
            return EBADF
        if self.dead:
            return self.dead
        holder = te_atomic_load_u64(&self.owner)
        if holder == me and self.enabled:
            return 0
        if holder != 0 and holder != me:
            return EBUSY
        if holder == 0 and not te_atomic_cas_u64(&self.owner, 0, me):
            return EBUSY  # another thread took it between the load and the swap
        if self.setup_flags & TE_SETUP_R_DISABLED and \
                te_io_uring_register(self.ring_fd, TE_REGISTER_ENABLE_RINGS, NULL, 0) < 0:
            return errno  # still ours: the same thread may try again
        self.enabled = True
        return 0

    @cython.boundscheck(False)
    cdef int _run(self, uint32_t n) noexcept nogil:
        # Submits the n SQEs queued after local_tail - n and waits for all n completions; their
        # results land in res[user_data]. Returns 0, or the errno that makes the ring unusable
        # (then self.dead is set: SQEs may still be queued, so nothing may be submitted again).
        cdef uint32_t reaped = 0, head, tail
        cdef int ret
        cdef te_cqe *cqe
        te_store_release(self.sq_tail, self.local_tail)
        while True:
            head = self.cq_head[0]
            tail = te_load_acquire(self.cq_tail)
            while head != tail:
                cqe = &self.cqes[head & self.cq_mask]
                self.res[cqe.user_data] = cqe.res
                head += 1
                reaped += 1
            te_store_release(self.cq_head, head)
            if reaped >= n:
                return 0
            ret = te_io_uring_enter(self.ring_fd, self.local_tail - te_load_acquire(self.sq_head),
                                    n - reaped, TE_ENTER_GETEVENTS)
            self.enters += 1
            if ret < 0 and errno != EINTR and errno != EAGAIN and errno != EBUSY:
                self.dead = errno
                return errno

    cdef int _file_of(self, int fd) noexcept nogil:
        cdef int k
        for k in range(self.nfiles):
            if self.files[k] == fd:
                return k
        return -1

    cdef int _buf_of(self, PacketRing ring) noexcept nogil:
        cdef int k
        for k in range(self.nbufs):
            if self.bufs[k] == ring.slab:
                return k
        return -1

    cdef void _unregister(self) noexcept:
        # Forgets every registration (the kernel drops them with the ring fd anyway) and gives
        # the rings back to their owners.
        cdef PacketRing ring
        if self.ring_fd >= 0 and not self.dead:
            if self.nfiles:
                te_io_uring_register(self.ring_fd, TE_UNREGISTER_FILES, NULL, 0)
            if self.nbufs:
                te_io_uring_register(self.ring_fd, TE_UNREGISTER_BUFFERS, NULL, 0)
        self.nfiles = self.nbufs = 0
        if self._registered is not None:    # None when the GC cleared a cycle first
            for ring in self._registered:
                ring._users -= 1
            self._registered.clear()

    # -- Python API ---------------------------------------------------------------------------

    def register(self, fds=(), rings=()):
        """Register ``fds`` and the slabs of ``rings`` with the kernel, for this thread's batches.

        Reads and writes of a registered fd skip the file lookup per operation
        (``IOSQE_FIXED_FILE``); those into a registered ring's slots are ``READ_FIXED`` /
        ``WRITE_FIXED`` (pages pinned once, not per operation). The calling thread takes the
        io_uring, as its first batch would (the kernel wants registrations from the ring's single
        issuer). Each ring stays in use (its ``close()``/``resize()`` raise) until
        ``unregister()`` or ``close()``; the fds must stay open until then too (the kernel holds
        the files, but the fd numbers name them here). Replaces the previous registration.

        Returns ``{"files": n, "buffers": m, "error": why}``: what the kernel accepted. A refusal
        (pinned memory past ``RLIMIT_MEMLOCK`` without ``CAP_IPC_LOCK``, an old kernel) leaves
        that part out and says why in ``error`` (also ``register_error``); those operations then
        go through plain ``READ``/``WRITE``. Raises when the io_uring is closed or another
        thread's, or for bad arguments.
        """
        cdef int k, err
        cdef PacketRing ring
        cdef int cfds[MAX_REGISTERED]
        cdef iovec iovs[MAX_REGISTERED]
        numbers = [fd_of(fd) for fd in fds]
        rings = list(rings)
        if len(numbers) > MAX_REGISTERED or len(rings) > MAX_REGISTERED:
            raise ValueError(f"at most {MAX_REGISTERED} fds and {MAX_REGISTERED} rings, not "
                             f"{len(numbers)} and {len(rings)}")
        for ring in rings:
            if ring is None or ring.closed:
                raise ValueError("cannot register a closed ring")
        self.check()
        err = self._own()
        if err:
            raise_errno(err, "taking the io_uring for this thread")
        self._unregister()
        errors = []
        for k, fd in enumerate(numbers):
            cfds[k] = fd
        if numbers:
            if te_io_uring_register(self.ring_fd, TE_REGISTER_FILES, cfds, len(numbers)) == 0:
                for k in range(len(numbers)):
                    self.files[k] = cfds[k]
                self.nfiles = len(numbers)
            else:
                err = errno
                errors.append(f"files: {os.strerror(err)}")
        for k, ring in enumerate(rings):
            iovs[k].iov_base = ring.slab
            iovs[k].iov_len = <size_t>ring.nslots * ring.stride
        if rings:
            if te_io_uring_register(self.ring_fd, TE_REGISTER_BUFFERS, iovs, len(rings)) == 0:
                for k, ring in enumerate(rings):
                    self.bufs[k] = ring.slab
                    ring._users += 1
                    self._registered.append(ring)
                self.nbufs = len(rings)
            else:
                err = errno
                errors.append(f"buffers: {os.strerror(err)}"
                              + (" (pinned memory is limited by RLIMIT_MEMLOCK without "
                                 "CAP_IPC_LOCK)" if err == ENOMEM else ""))
        self.register_error = "; ".join(errors)
        return {"files": self.nfiles, "buffers": self.nbufs, "error": self.register_error}

    def unregister(self):
        """Undo ``register()``: the rings are free to close again. Safe to call at any time."""
        self._unregister()

    @property
    def backend(self):
        """``"io_uring"``: which backend moves the packets."""
        return "io_uring"

    @property
    def flags(self):
        """Names of the io_uring setup flags the kernel accepted for this ring."""
        names = {TE_SETUP_SINGLE_ISSUER: "SINGLE_ISSUER", TE_SETUP_DEFER_TASKRUN: "DEFER_TASKRUN",
                 TE_SETUP_R_DISABLED: "R_DISABLED", TE_SETUP_COOP_TASKRUN: "COOP_TASKRUN"}
        return [name for bit, name in names.items() if self.setup_flags & bit]

    @property
    def closed(self):
        return self.ring_fd < 0

    def close(self):
        """Unmap the rings and close the io_uring fd (also done when the object goes away).
        Refused (``BufferError``) while a C loop uses it: a batch running in another thread,
        a generator or sink, or a ``Forwarder`` it was given to."""
        if self._users:
            raise BufferError(f"cannot close the io_uring: {self._users} C loop(s) use it (a "
                              "running batch, generator, sink or forwarder): stop them first")
        self._free()

    def stats(self):
        """Counters since creation: syscalls, SQEs, empty reads, packets moved to close gaps or
        in front of a failed write, SQEs on registered buffers; what is registered now."""
        return {"enters": self.enters, "submitted": self.submitted,
                "empty_reads": self.empty_reads, "moved": self.moved,
                "reordered": self.reordered, "fixed_ops": self.fixed_ops, "direct": self.direct,
                "registered_files": self.nfiles, "registered_buffers": self.nbufs}

    # -- the BatchIO interface ------------------------------------------------------------------

    cdef uint32_t recv(self, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                       int *err) noexcept nogil:
        # Returns what uring_recv returns.
        return uring_recv(self, fd, ring, budget, vnet_hdr, err)

    cdef uint32_t send(self, int fd, PacketRing ring, uint32_t first, uint32_t count,
                       bint vnet_hdr, int *err) noexcept nogil:
        # Returns what uring_send returns.
        return uring_send(self, fd, ring, first, count, vnet_hdr, err)

    cdef int check(self) except -1:
        # Returns 0 when the calling thread may submit; raises when closed or another thread's.
        if self.ring_fd < 0:
            raise ValueError("the io_uring is closed")
        cdef uint64_t holder = te_atomic_load_u64(&self.owner)
        if holder != 0 and holder != te_thread_id():
            raise RuntimeError("this UringIO belongs to another thread; give each thread its own")
        return 0


cdef inline void _prep(te_sqe *sqe, uint8_t opcode, int fd, void *addr, uint32_t length,
                       uint8_t flags, uint64_t user_data, uint16_t buf_index) noexcept nogil:
    sqe.opcode = opcode
    sqe.flags = flags
    sqe.ioprio = 0
    sqe.fd = fd
    sqe.off = 0                 # tun/tap fds have no file position
    sqe.addr = <uint64_t>addr
    sqe.len = length
    sqe.rw_flags = TE_RWF_NOWAIT  # never park a request: see the module docstring
    sqe.user_data = user_data
    sqe.buf_index = buf_index
    sqe.personality = 0
    sqe.file_index = 0
    sqe.addr3 = 0
    sqe.pad2 = 0


cdef inline void _queue_rw(UringIO io, uint32_t k, bint write, int fd, int file_index,
                           PacketRing ring, int buf_index, uint32_t index, uint32_t length,
                           bint vnet_hdr, uint8_t flags) noexcept nogil:
    # Queues the k-th SQE of a batch: packet slot ``index`` of ``ring``, ``length`` frame bytes,
    # with the virtio-net header in front of them when ``vnet_hdr``: one buffer either way.
    # ``file_index``/``buf_index``: the registered fd / ring slab, or -1 (not registered).
    cdef te_sqe *sqe = &io.sqes[io.local_tail & io.sq_mask]
    cdef uint8_t *buf
    cdef uint8_t opcode
    cdef size_t hdr_len = VNET_HDR_LEN if vnet_hdr else 0
    io.local_tail += 1
    if write:
        buf = ring_frame(ring, index) - hdr_len
        opcode = TE_OP_WRITE if buf_index < 0 else TE_OP_WRITE_FIXED
    else:
        buf = ring_fresh(ring, index) - hdr_len   # at FRAME_OFFSET, with no peer
        opcode = TE_OP_READ if buf_index < 0 else TE_OP_READ_FIXED
    if file_index >= 0:
        fd = file_index
        flags |= TE_IOSQE_FIXED_FILE
    _prep(sqe, opcode, fd, buf, <uint32_t>(hdr_len + length), flags, k,
          <uint16_t>buf_index if buf_index >= 0 else 0)


@cython.boundscheck(False)
@cython.cdivision(True)
cdef uint32_t uring_recv(UringIO io, int fd, PacketRing ring, uint32_t budget, bint vnet_hdr,
                         int *err) noexcept nogil:
    # Returns the packets read into [tail, tail + n) (tail advanced); *err = 0 or the errno.
    cdef uint32_t n = 0, dropped = 0, wave, k, base, want
    cdef int32_t r
    cdef size_t hdr_len = VNET_HDR_LEN if vnet_hdr else 0
    cdef uint32_t room = ring_free(ring)
    cdef bint stop = False
    cdef uint32_t *hint = &io.hint[<uint32_t>fd & (HINT_SLOTS - 1)]
    cdef uint32_t direct = 0
    cdef int file_index, buf_index
    err[0] = io._own()
    if err[0]:
        return 0
    file_index = io._file_of(fd)
    buf_index = io._buf_of(ring)
    if budget > room:
        budget = room
    if hint[0] <= 1 and io._direct_small:
        # At moderate rates each wakeup finds one packet: read() it and the read() that finds the
        # queue empty cost less than an io_uring_enter with two SQEs (bench/RESULTS.md, "CPU per
        # frame at a fixed rate"). Two packets in a row say a burst: the rest through io_uring.
        direct = ring_recv(fd, ring, DIRECT_READS if budget > DIRECT_READS else budget, vnet_hdr,
                           err)
        io.direct += direct
        if direct < DIRECT_READS or err[0] or direct >= budget:
            hint[0] = direct
            return direct
        budget -= direct
    # A read finding the queue empty costs an SQE, an extra enter costs a syscall: start with
    # what this fd had last time (plus a little), and double while every read finds a packet.
    want = hint[0] + hint[0] // 4 + 1
    while n + dropped < budget and not stop:   # a frame too long counts against the budget
        wave = budget - n - dropped
        if wave > want:
            wave = want
        if wave > io.entries:
            wave = io.entries
        base = n
        for k in range(wave):
            # one byte more than the slot (the stride's spare byte) shows a frame too long
            _queue_rw(io, k, False, fd, file_index, ring, buf_index, ring.tail + base + k,
                      ring.slot_size + 1, vnet_hdr, 0)
        io.submitted += wave
        if buf_index >= 0:
            io.fixed_ops += wave
        err[0] = io._run(wave)
        if err[0]:
            break       # the ring is unusable; these reads' results are unknown
        for k in range(wave):
            r = io.res[k]
            if r >= 0 and <size_t>r >= hdr_len:
                if <size_t>r - hdr_len > ring.slot_size:
                    ring.truncated += 1     # dropped: the next packet closes the gap it leaves
                    dropped += 1
                    continue
                if base + k != n:
                    # A gap: an earlier read of this wave found the queue empty, this one a packet
                    # that arrived meanwhile. Move it down so the slots stay contiguous.
                    # Both slots were read at FRAME_OFFSET with no peer (_queue_rw): the header
                    # and frame are one run of r bytes at the same place in each.
                    memmove(ring_frame(ring, ring.tail + n) - hdr_len,
                            ring_frame(ring, ring.tail + base + k) - hdr_len, <size_t>r)
                    io.moved += 1
                ring_len(ring, ring.tail + n)[0] = <uint32_t>(r - hdr_len)
                n += 1
                continue
            stop = True
            if r >= 0:
                if err[0] == 0:
                    err[0] = EPROTO     # a vnet fd always prepends a whole header
            elif r == -EAGAIN or r == -EINTR:
                io.empty_reads += 1
            elif err[0] == 0:
                err[0] = -r
        want = wave * 2
    hint[0] = direct + n
    ring.tail += n
    return direct + n


cdef inline void _copy_slot(PacketRing ring, uint32_t dst, uint32_t src) noexcept nogil:
    # Slot ``src``'s packet into slot ``dst``: header and frame at the same offset, length, peer.
    cdef uint16_t off = ring_off(ring, src)[0]
    memcpy(ring_slot(ring, dst) + off - VNET_HDR_LEN, ring_slot(ring, src) + off - VNET_HDR_LEN,
           VNET_HDR_LEN + ring_len(ring, src)[0])
    ring_off(ring, dst)[0] = off
    ring_len(ring, dst)[0] = ring_len(ring, src)[0]
    ring_peer(ring, dst)[0] = ring_peer(ring, src)[0]


cdef uint32_t _sent_first(UringIO io, PacketRing ring, uint32_t first, uint32_t chunk,
                          uint32_t failed) noexcept nogil:
    # The writes of slots [first, first + chunk) ran unlinked and res[] holds their results;
    # res[failed] is the first failure. Moves the packets that went out after it in front of the
    # failed ones (order kept on both sides: a stable partition, slot contents moved through the
    # spare slot) and returns how many went out in all. Rare: only a batch with a failed write.
    cdef uint32_t w = failed, j, p
    cdef uint16_t off
    cdef uint32_t length
    cdef te_sockaddr peer
    cdef int32_t r
    for j in range(failed + 1, chunk):
        if io.res[j] < 0:
            continue
        # slot j went out: rotate [w, j] right by one, so it lands at w and the failed ones
        # between move up by one
        off = ring_off(ring, first + j)[0]
        length = ring_len(ring, first + j)[0]
        peer = ring_peer(ring, first + j)[0]
        memcpy(io.spare + off - VNET_HDR_LEN,
               ring_slot(ring, first + j) + off - VNET_HDR_LEN, VNET_HDR_LEN + length)
        r = io.res[j]
        p = j
        while p > w:
            _copy_slot(ring, first + p, first + p - 1)
            io.res[p] = io.res[p - 1]
            p -= 1
        memcpy(ring_slot(ring, first + w) + off - VNET_HDR_LEN, io.spare + off - VNET_HDR_LEN,
               VNET_HDR_LEN + length)
        ring_off(ring, first + w)[0] = off
        ring_len(ring, first + w)[0] = length
        ring_peer(ring, first + w)[0] = peer
        io.res[w] = r
        io.reordered += 1
        w += 1
    return w


@cython.boundscheck(False)
cdef uint32_t uring_send(UringIO io, int fd, PacketRing ring, uint32_t first, uint32_t count,
                         bint vnet_hdr, int *err) noexcept nogil:
    # Returns the packets written from slot ``first`` on; *err = 0 or the errno that stopped it.
    # The slots [first, first + n) are exactly the packets that went out: when a write failed
    # and later ones of its batch did not, those are moved in front of it (_sent_first).
    cdef uint32_t n = 0, chunk, k, went
    cdef int32_t r
    cdef bint refused = False
    cdef int file_index, buf_index
    err[0] = io._own()
    if err[0]:
        return 0
    if count == 1 and io._direct_small:
        n = ring_send(fd, ring, first, 1, vnet_hdr, err)   # one write() costs less than an enter
        io.direct += n
        return n
    file_index = io._file_of(fd)
    buf_index = io._buf_of(ring)
    while n < count:
        chunk = count - n
        if chunk > io.entries:
            chunk = io.entries
        for k in range(chunk):
            if not ring_slot_ok(ring, first + n + k):
                chunk = k       # a length or offset past the slot (see ring.pxd): never read
                refused = True
                break
        for k in range(chunk):
            _queue_rw(io, k, True, fd, file_index, ring, buf_index, first + n + k,
                      ring_len(ring, first + n + k)[0], vnet_hdr,
                      TE_IOSQE_IO_LINK if k + 1 < chunk and io._link_writes else 0)
        if chunk:
            io.submitted += chunk
            if buf_index >= 0:
                io.fixed_ops += chunk
            err[0] = io._run(chunk)
            if err[0]:
                return n    # the ring is unusable: report only what is known to be written
        for k in range(chunk):
            r = io.res[k]
            if r < 0:
                if r != -EAGAIN and r != -EINTR and r != -ECANCELED:
                    err[0] = -r
                went = _sent_first(io, ring, first + n, chunk, k)
                return n + went
        n += chunk
        if refused:
            err[0] = EMSGSIZE
            return n
    return n


# -- the runtime probe ---------------------------------------------------------------------------

_probe_lock = threading.Lock()
_probe_result = None        # None until probed, then "" (usable) or why not


def _probe():
    """Why io_uring cannot carry our batches here, or "" when it can (one ring, one pipe)."""
    cdef te_uring_params p
    cdef te_probe probe
    cdef int fd
    memset(&p, 0, sizeof(p))
    fd = te_io_uring_setup(4, &p)
    if fd < 0:
        return f"io_uring_setup failed: {os.strerror(errno)}"
    try:
        memset(&probe, 0, sizeof(probe))
        if te_io_uring_register(fd, TE_REGISTER_PROBE, &probe, TE_PROBE_OPS) < 0:
            return f"IORING_REGISTER_PROBE failed: {os.strerror(errno)} (kernel < 5.6)"
        for name, op in _NEEDED_OPS.items():
            if op > probe.last_op or not (probe.ops[op].flags & TE_IO_URING_OP_SUPPORTED):
                return f"IORING_OP_{name} is not supported"
    finally:
        close(fd)
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return _check_nonblocking_semantics(rfd, wfd)
    finally:
        os.close(rfd)
        os.close(wfd)


cdef str _check_nonblocking_semantics(int rfd, int wfd):
    # A read of an empty O_NONBLOCK fd must complete at once with -EAGAIN (never wait), and a
    # write then a read must each complete within their enter. Returns "" when they do.
    cdef UringIO io = UringIO.__new__(UringIO)
    cdef PacketRing ring = PacketRing(4, 64)
    cdef int err = 0
    cdef uint32_t n
    try:
        io._setup_any(4)
    except OSError as exc:
        return f"io_uring_setup failed: {exc}"
    try:
        with nogil:
            n = uring_recv(io, rfd, ring, 1, False, &err)
        if err or n != 0 or io.empty_reads != 1:
            return f"a read of an empty non-blocking fd did not complete with EAGAIN ({err}, {n})"
        ring.push(b"tapengin")
        with nogil:
            n = uring_send(io, wfd, ring, 0, 1, False, &err)
        if err or n != 1:
            return f"a write through io_uring failed ({os.strerror(err) if err else n})"
        ring.consume(1)
        with nogil:
            n = uring_recv(io, rfd, ring, 1, False, &err)
        if err or n != 1 or ring.packet(ring.head) != b"tapengin":
            return "a read through io_uring did not return what was written"
        return ""
    finally:
        io.close()
        ring.close()


def available():
    """True when batches can go through io_uring here (probed once per process).

    False when the kernel lacks io_uring or the opcodes we use, when it is disabled
    (``kernel.io_uring_disabled``) or filtered (seccomp, containers), or when the environment sets
    ``TAPENGINE_NO_URING=1``.
    """
    return unavailable_reason() == ""


def unavailable_reason():
    """Why ``available()`` is false, or "" when it is true."""
    global _probe_result
    if os.environ.get("TAPENGINE_NO_URING", "") not in ("", "0"):
        return "TAPENGINE_NO_URING is set"
    if _probe_result is None:
        with _probe_lock:
            if _probe_result is None:
                _probe_result = _probe()
    return _probe_result


def open_batch_io(entries=256):
    """A ``UringIO`` when io_uring is available here, else the readv/writev ``ReadvIO``: either
    goes to ``recv_batch``/``send_batch`` (``io=``), ``Forwarder``, ``Generator`` and ``Sink``."""
    return UringIO(entries) if available() else ReadvIO()
