# cython: language_level=3, embedsignature=True
"""The forwarder: one C loop, run without the GIL, that moves packets between ports.

A port is a tun/tap queue fd with its own PacketRing. Each pass of the loop drains a batch from
every port into its ring (``ring_recv``), picks the egress of each packet, writes it straight from
the ingress ring to the egress fd (``ring_send``) and counts. When a pass moves nothing the loop
sleeps in ``epoll_wait`` on every port fd and an eventfd that ``stop()`` writes to; while traffic
flows it never sleeps.

Modes: ``wire`` (two ports, each forwards to the other) and ``switch`` (a MAC learning table:
known unicast goes to its port, anything else is flooded to every other port that is up, never
back to the ingress port). Like the kernel's bridge (STP off), the switch drops a frame whose
source MAC is multicast, broadcast or all-zero (``bad_src_mac``) and never relays the IEEE 802.1D
reserved group addresses 01:80:c2:00:00:01-0f (``reserved_group``).

Every packet read is forwarded or counted as dropped with its reason. A device that vanishes
(``EBADFD``, ``ENODEV``, ``ENXIO``, ``EIO`` on read, or ``EPOLLERR``/``EPOLLHUP``) marks its port
down for good; so does a port whose reads fail with the same errno for a second with nothing read
in between (a dead io_uring, ``EBUSY``): its fd leaves the epoll set, so the worker sleeps instead
of spinning on it. The loop keeps serving the others; once no port is up, ``run()`` raises (a
worker that can never forward again must not look alive). On a ``port_io`` port (a socket)
``EPOLLERR`` is an error queued on the socket, such as an ICMP port unreachable for a connected UDP
socket whose peer restarts: the receive counts it (``rx_errors``) and the port stays up, however
long such errors keep coming (they are not a failing read).

The forwarder owns what its loop uses: ``add_port`` takes a ``dup()`` of the fd (closed by
``close()``), so the caller closing its fd cannot hand the number to an unrelated file under the
loop; and each ring counts the forwarder as a user, so ``PacketRing.close()``/``resize()`` raise
until the forwarder is closed.

Counters are uint64 rows, one per port, in numpy arrays the loop writes in place: read them from
Python at any time without stopping anything (each 64-bit load is atomic on the platforms we run).
"""

cimport cython
from libc.errno cimport (
    EBADFD, ECONNREFUSED, EHOSTDOWN, EHOSTUNREACH, EINTR, EIO, EMSGSIZE, ENETDOWN, ENETUNREACH,
    ENODEV, ENXIO, EPIPE, errno,
)
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from posix.fcntl cimport F_DUPFD_CLOEXEC, fcntl
from libc.string cimport memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, clock_nanosleep, timespec
from posix.unistd cimport close, write

from tapengine._batchio cimport BatchIO, PortIO, ring_recv_via, ring_send_via
from tapengine._gso cimport (
    GSO_OUT_FULL_CSUM, GSO_REASON_COUNT, VNET_F_NEEDS_CSUM, VNET_GSO_ECN, VNET_GSO_NONE, gso_info,
    gso_segment, gso_store_hdr_len, gso_validate,
)
from tapengine._ring cimport (
    PacketRing, ring_frame, ring_hdr, ring_len, ring_lengths_ok, ring_peer, ring_slot_ok,
    te_sockaddr,
)
from tapengine._stage cimport (
    N_STAGE_COUNTERS, STAGE_BATCHES, STAGE_DROPPED, STAGE_INVALID, STAGE_MISDIRECTED, STAGE_NS,
    STAGE_REDIRECTED, STAGE_SEEN, VERDICT_DEFAULT, VERDICT_DROP, VERDICT_FLOOD, Stage,
)
from tapengine._uring cimport UringIO
from tapengine.includes.atomics cimport te_atomic_load_int, te_atomic_store_int
from tapengine.includes.consts cimport ETH_HLEN
from tapengine.includes.system cimport (
    CLOCK_MONOTONIC_COARSE, EFD_CLOEXEC, EFD_NONBLOCK, EPOLL_CLOEXEC, EPOLL_CTL_ADD,
    EPOLL_CTL_DEL, EPOLLERR, EPOLLHUP, EPOLLIN, PR_GET_TIMERSLACK, PR_SET_TIMERSLACK,
    __builtin_clz, epoll_create1, epoll_ctl, epoll_event, epoll_wait, eventfd, prctl,
    pthread_mutex_destroy, pthread_mutex_init, pthread_mutex_lock, pthread_mutex_unlock,
)
from tapengine.syscall cimport fd_of, raise_errno

import os

import numpy as np

#: Column names of ``Forwarder.counters``, in the order of the ``Counter`` enum.
COUNTER_NAMES = (
    "rx_packets", "rx_bytes", "rx_batches", "tx_packets", "tx_bytes", "flooded", "segmented",
    "drop_full", "drop_link_down", "drop_port_down", "drop_tx_error",
    "drop_needs_segmentation", "drop_bad_header", "drop_filtered", "drop_no_egress",
    "drop_malformed", "drop_bad_src_mac", "drop_reserved_group", "drop_truncated",
    "rx_errors", "last_errno",
)
assert len(COUNTER_NAMES) == N_COUNTERS

#: Drop reasons (the ``drop_*`` columns without their prefix).
DROP_REASONS = tuple(name[5:] for name in COUNTER_NAMES if name.startswith("drop_"))

#: Labels of the batch-size histogram buckets: 1, 2-3, 4-7, ..., 256-511.
HISTOGRAM_BUCKETS = tuple(
    "1" if b == 0 else f"{1 << b}-{(2 << b) - 1}" for b in range(HIST_BUCKETS)
)

MODES = ("wire", "switch")

#: The longest ``coalesce_usecs`` a forwarder takes (1 ms).
MAX_COALESCE_USECS = 1000

cdef enum:
    SCRATCH_SLOTS = 128         # segments of one superframe: 64 KiB / 536-byte MSS fits
    SCRATCH_SLOT_SIZE = 16384
    STOP_TAG = MAX_PORTS        # epoll tag of the stop eventfd; ports are tagged 0..nports-1
    ENTRIES_CHUNK = 1024        # MacTable.entries() copies this many slots per hold of the lock
    ALL_DOWN = -1               # _loop's return once no port is up
    COALESCE_BELOW = 8          # a pass that moved fewer packets "found little"
    COALESCE_BACKOFF_MAX = 63   # most coalescing waits skipped after idle ones
    COALESCE_SLACK_NS = 1000    # the worker's timer slack while it coalesces (default 50 us)
    STAGE_FAILED = -2           # _loop's return once a stage asked to stop

#: How long a port's reads may fail with the same errno, nothing read in between, before the port
#: is taken down (ns).
cdef uint64_t FAILING_NS = 1000000000

cdef extern from *:
    """
    #define TE_VALID_BIT (1ULL << 63)
    """
    const uint64_t VALID_BIT "TE_VALID_BIT"      # set in every used MacEntry.key

#: 01:80:c2:00:00:00, the first of the IEEE 802.1D reserved group addresses (to ...:0f).
cdef uint64_t RESERVED_GROUP = 0x0180C2000000


# -- helpers for the loop ----------------------------------------------------------------------

cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline uint64_t _clock_ns() noexcept nogil:
    # CLOCK_MONOTONIC (vDSO, ~20 ns): the time spent in a stage.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline int _process(Stage stage, int port, PacketRing ring, uint32_t first, uint32_t n,
                         int32_t *verdict) noexcept nogil:
    # Returns what the stage's process() returns (a borrowed stage, called without the GIL).
    return stage.process(port, ring, first, n, verdict)


cdef inline bint _aged(uint64_t now, uint64_t seen_ns, uint64_t ageing_ns) noexcept nogil:
    # Whether an entry stamped ``seen_ns`` is older than ``ageing_ns`` at ``now``: a signed
    # difference, so a stamp a little after ``now`` is young, not 584 years old.
    return <int64_t>(now - seen_ns) > <int64_t>ageing_ns


cdef inline uint64_t _mac_at(const uint8_t *p) noexcept nogil:
    return ((<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24)
            | (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | <uint64_t>p[5])


cdef inline bint _device_gone(int err) noexcept nogil:
    return err == EBADFD or err == ENODEV or err == ENXIO


cdef inline bint _queued_socket_error(int err) noexcept nogil:
    # An ICMP error queued on a socket (sk_err), reported once by the next receive: its peer or
    # the path to it is away for now, nothing that failing again makes permanent.
    return (err == ECONNREFUSED or err == EHOSTUNREACH or err == ENETUNREACH
            or err == EHOSTDOWN or err == ENETDOWN or err == EMSGSIZE)


cdef inline bint _needs_segmentation(const uint8_t *hdr) noexcept nogil:
    # A superframe (gso_type set) or a packet whose checksum the sender left for us to complete.
    return (hdr[0] & VNET_F_NEEDS_CSUM) != 0 or (hdr[1] & ~VNET_GSO_ECN) != VNET_GSO_NONE


cdef inline int _bucket(uint32_t n) noexcept nogil:
    # Histogram bucket of a batch of n >= 1 packets: floor(log2(n)), capped.
    cdef int b = 31 - __builtin_clz(n)
    return b if b < HIST_BUCKETS else HIST_BUCKETS - 1


def format_mac(uint64_t mac):
    """``aa:bb:cc:dd:ee:ff`` for a 48-bit MAC held in an int."""
    return ":".join(f"{(mac >> shift) & 0xff:02x}" for shift in range(40, -8, -8))


def parse_mac(str text):
    """The 48-bit int of ``aa:bb:cc:dd:ee:ff``; raises ValueError on anything else."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(part) == 2 for part in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return int("".join(parts), 16)


# -- the MAC learning table --------------------------------------------------------------------

cdef int _check_port(int port) except -1:
    # Returns 0 for a port number a table entry may hold, else raises ValueError.
    if not 0 <= port < MAX_PORTS:
        raise ValueError(f"port must be between 0 and {MAX_PORTS - 1}, not {port}")
    return 0


@cython.final
cdef class MacTable:
    """A bounded MAC learning table with ageing, shared by the workers of one switch.

    Set-associative: a MAC hashes to a bucket of 4 entries. Learning refreshes a known entry,
    else takes an empty or aged-out entry of the bucket, else evicts the bucket's least recently
    seen entry; so the table never grows past ``capacity`` and never rehashes. A worker holds the
    table's mutex once per batch (learning and lookups of the whole batch), not per packet.
    """

    def __cinit__(self, capacity=4096, ageing=300.0):
        self.slots = NULL
        if capacity < MAC_WAYS or capacity > (1 << 24):
            raise ValueError(f"capacity must be between {MAC_WAYS} and {1 << 24}, not {capacity}")
        if not ageing > 0:
            raise ValueError(f"ageing must be > 0 seconds, not {ageing}")
        cdef uint32_t nbuckets = 1
        while nbuckets * MAC_WAYS < capacity:
            nbuckets <<= 1
        self.slots = <MacEntry *>calloc(nbuckets * MAC_WAYS, sizeof(MacEntry))
        if self.slots == NULL:
            raise MemoryError(f"cannot allocate a MAC table of {nbuckets * MAC_WAYS} entries")
        self.nbuckets = nbuckets
        self.ageing_ns = <uint64_t>(ageing * 1e9)
        pthread_mutex_init(&self.lock, NULL)

    def __dealloc__(self):
        if self.slots != NULL:
            pthread_mutex_destroy(&self.lock)
            free(self.slots)

    cdef MacEntry *_bucket_of(self, uint64_t mac) noexcept nogil:
        cdef uint64_t h = (mac * <uint64_t>0x9E3779B97F4A7C15) >> 32
        return self.slots + (h & (self.nbuckets - 1)) * MAC_WAYS

    cdef void learn(self, uint64_t mac, int32_t port, uint64_t now) noexcept nogil:
        cdef MacEntry *bucket = self._bucket_of(mac)
        cdef MacEntry *free_entry = NULL
        cdef MacEntry *oldest = NULL
        cdef uint64_t key = mac | VALID_BIT
        cdef int w
        for w in range(MAC_WAYS):
            if bucket[w].key == key:
                if bucket[w].port != port:
                    bucket[w].port = port
                    self.moved += 1
                bucket[w].seen_ns = now
                return
            if bucket[w].key == 0 or _aged(now, bucket[w].seen_ns, self.ageing_ns):
                if free_entry == NULL:
                    free_entry = &bucket[w]
            elif oldest == NULL or <int64_t>(bucket[w].seen_ns - oldest.seen_ns) < 0:
                oldest = &bucket[w]
        if free_entry == NULL:
            free_entry = oldest
            self.evicted += 1
        free_entry.key = key
        free_entry.port = port
        free_entry.seen_ns = now
        self.learned += 1

    cdef int32_t lookup(self, uint64_t mac, uint64_t now) noexcept nogil:
        cdef MacEntry *bucket = self._bucket_of(mac)
        cdef uint64_t key = mac | VALID_BIT
        cdef int w
        for w in range(MAC_WAYS):
            if bucket[w].key == key:
                if _aged(now, bucket[w].seen_ns, self.ageing_ns):
                    return -1
                return bucket[w].port
        return -1

    cdef void forget_port(self, int32_t port) noexcept nogil:
        cdef uint32_t k
        for k in range(self.nbuckets * MAC_WAYS):
            if self.slots[k].key and self.slots[k].port == port:
                self.slots[k].key = 0

    cdef uint32_t count(self, uint64_t now) noexcept nogil:
        cdef uint32_t k, n = 0
        for k in range(self.nbuckets * MAC_WAYS):
            if self.slots[k].key and not _aged(now, self.slots[k].seen_ns, self.ageing_ns):
                n += 1
        return n

    # -- Python API (each call holds the mutex briefly) -----------------------------------

    @property
    def capacity(self):
        """Most entries the table holds."""
        return self.nbuckets * MAC_WAYS

    @property
    def ageing(self):
        """Seconds after which an entry not seen as a source is forgotten."""
        return self.ageing_ns / 1e9

    def __len__(self):
        cdef uint32_t n
        with nogil:
            pthread_mutex_lock(&self.lock)
            n = self.count(_now_ns())
            pthread_mutex_unlock(&self.lock)
        return n

    def entries(self):
        """``[(mac, port, age_seconds), ...]`` of live entries, sorted by port then MAC.

        The live entries are copied out in C, ``ENTRIES_CHUNK`` slots per hold of the mutex;
        the Python objects are made after it is released, so the workers wait for a memcpy-sized
        pause at most, never for Python. A MAC always lives in the same bucket, so it is listed
        at most once even when the table changes in between.
        """
        cdef uint32_t total = self.nbuckets * MAC_WAYS
        cdef uint32_t start = 0, stop, k, n
        cdef uint64_t now
        cdef MacEntry *chunk = <MacEntry *>malloc(ENTRIES_CHUNK * sizeof(MacEntry))
        cdef list rows = []
        if chunk == NULL:
            raise MemoryError("cannot allocate room to copy the MAC table")
        try:
            while start < total:
                stop = start + ENTRIES_CHUNK if total - start > ENTRIES_CHUNK else total
                n = 0
                with nogil:
                    pthread_mutex_lock(&self.lock)
                    now = _now_ns()
                    for k in range(start, stop):
                        if self.slots[k].key and not _aged(now, self.slots[k].seen_ns,
                                                           self.ageing_ns):
                            chunk[n] = self.slots[k]
                            # the age, never negative (stamps are taken under this lock)
                            chunk[n].seen_ns = (now - chunk[n].seen_ns
                                                if <int64_t>(now - chunk[n].seen_ns) > 0 else 0)
                            n += 1
                    pthread_mutex_unlock(&self.lock)
                for k in range(n):
                    rows.append((format_mac(chunk[k].key & ~VALID_BIT), chunk[k].port,
                                 chunk[k].seen_ns / 1e9))
                start = stop
        finally:
            free(chunk)
        rows.sort(key=lambda row: (row[1], row[0]))
        return rows

    def lookup_mac(self, str mac):
        """The port a MAC was learned on, or None when unknown or aged out."""
        cdef uint64_t key = parse_mac(mac)
        cdef int32_t port
        with nogil:
            pthread_mutex_lock(&self.lock)
            port = self.lookup(key, _now_ns())
            pthread_mutex_unlock(&self.lock)
        return None if port < 0 else port

    def learn_mac(self, str mac, int port):
        """Teach the table that ``mac`` sits behind ``port`` (0 .. 63; tests and static entries).
        A switch floods frames to a MAC learned on a port it does not have."""
        cdef uint64_t key = parse_mac(mac)
        _check_port(port)
        with nogil:
            pthread_mutex_lock(&self.lock)
            self.learn(key, port, _now_ns())
            pthread_mutex_unlock(&self.lock)

    def _learn_at(self, str mac, int port, uint64_t now_ns):
        """``learn_mac`` with the stamp ``now_ns`` (CLOCK_MONOTONIC_COARSE ns), for tests."""
        cdef uint64_t key = parse_mac(mac)
        _check_port(port)
        with nogil:
            pthread_mutex_lock(&self.lock)
            self.learn(key, port, now_ns)
            pthread_mutex_unlock(&self.lock)

    def _lookup_at(self, str mac, uint64_t now_ns):
        """``lookup_mac`` as seen at ``now_ns`` (CLOCK_MONOTONIC_COARSE ns), for tests."""
        cdef uint64_t key = parse_mac(mac)
        cdef int32_t port
        with nogil:
            pthread_mutex_lock(&self.lock)
            port = self.lookup(key, now_ns)
            pthread_mutex_unlock(&self.lock)
        return None if port < 0 else port

    @staticmethod
    def _now_ns():
        """The table's clock (CLOCK_MONOTONIC_COARSE, ns), for tests."""
        return _now_ns()

    def forget(self, int port):
        """Drop every entry that points at ``port``."""
        _check_port(port)
        with nogil:
            pthread_mutex_lock(&self.lock)
            self.forget_port(port)
            pthread_mutex_unlock(&self.lock)

    def clear(self):
        cdef uint32_t k
        with nogil:
            pthread_mutex_lock(&self.lock)
            for k in range(self.nbuckets * MAC_WAYS):
                self.slots[k].key = 0
            pthread_mutex_unlock(&self.lock)

    @property
    def stats(self):
        """``{"learned", "moved", "evicted"}``: entries created, moved to another port, evicted."""
        return {"learned": self.learned, "moved": self.moved, "evicted": self.evicted}

    def __repr__(self):
        return f"<MacTable {len(self)}/{self.capacity} entries, ageing {self.ageing:g} s>"


# -- the built-in stages ----------------------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class WireStage(Stage):
    """The wire, as a stage: every packet still DEFAULT goes out of the other port."""

    def __init__(self):
        super().__init__("wire")

    cdef int process(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                     int32_t *verdict) noexcept nogil:
        cdef int32_t other = 1 - port if self.nports == 2 else VERDICT_NO_EGRESS
        cdef uint32_t k
        for k in range(n):
            if verdict[k] == VERDICT_DEFAULT:
                verdict[k] = other
        return 0


@cython.final
@cython.auto_pickle(False)
cdef class SwitchStage(Stage):
    """The learning switch, as a stage: learns the source of every packet still DEFAULT and
    sends it to the port its destination was learned on (flooded when unknown, broadcast,
    multicast, or behind a port that is down)."""

    def __init__(self, MacTable table not None):
        super().__init__("switch")
        self.table = table

    @cython.boundscheck(False)
    cdef int process(self, int i, PacketRing ring, uint32_t first, uint32_t n,
                     int32_t *verdict) noexcept nogil:
        cdef uint64_t now, src, dst
        cdef const uint8_t *frame
        cdef uint32_t k, index
        cdef int32_t known
        # One lock for the learning and lookups of the whole batch; no syscall held. ``now`` is
        # read under the lock, so no worker stamps an entry earlier than the last one.
        pthread_mutex_lock(&self.table.lock)
        now = _now_ns()
        for k in range(n):
            if verdict[k] != VERDICT_DEFAULT:
                continue
            index = first + k
            if ring_len(ring, index)[0] < ETH_HLEN:
                verdict[k] = VERDICT_MALFORMED
                continue
            frame = ring_frame(ring, index)
            src = _mac_at(frame + 6)
            if (frame[6] & 1) or src == 0:
                # Multicast, broadcast or all-zero: no station sends from it. The kernel bridge
                # drops these (is_valid_ether_addr) before learning anything; so do we.
                verdict[k] = VERDICT_BAD_SRC_MAC
                continue
            dst = _mac_at(frame)
            if (dst & ~<uint64_t>0xF) == RESERVED_GROUP and dst != RESERVED_GROUP:
                # 01:80:c2:00:00:01-0f (pause, LACP, 802.1X, LLDP, ...) are for the link, never
                # relayed. The kernel bridge learns their source, except from a pause frame
                # (dropped at once). 01:80:c2:00:00:00 (BPDUs) is flooded: with STP off the
                # kernel relays it so that loops stay visible to the bridges around us.
                if dst != RESERVED_GROUP + 1:
                    self.table.learn(src, i, now)
                verdict[k] = VERDICT_RESERVED_GROUP
                continue
            self.table.learn(src, i, now)
            verdict[k] = VERDICT_FLOOD              # broadcast and multicast stay flooded
            if not (frame[0] & 1):
                known = self.table.lookup(dst, now)
                # an entry for a port this forwarder lacks (learn_mac), or one that is down,
                # is as good as unknown
                if known == i:
                    verdict[k] = VERDICT_FILTERED
                elif 0 <= known < self.nports and te_atomic_load_int(&self.ports[known].up):
                    verdict[k] = known
        pthread_mutex_unlock(&self.table.lock)
        return 0


# -- the forwarder -----------------------------------------------------------------------------

cdef class Forwarder:
    """A C loop serving a set of ports; ``run()`` blocks (without the GIL) until ``stop()``.

    ``mode`` is ``"wire"`` (exactly two ports) or ``"switch"`` (a ``MacTable`` shared with the
    other workers of the same switch; one is made if none is given). ``budget`` is the most
    packets taken from one port per pass; each port's ring needs at least that many slots.
    ``io`` is the I/O backend (``open_batch_io()``; None: readv/writev); the forwarder's
    ``close()`` closes it. ``coalesce_usecs`` (0: off) is interrupt moderation for a userspace
    loop: after a wakeup that found only a few packets, the worker waits that long before it
    looks again, so that the next look finds a batch instead of one packet per wakeup (see
    ``_loop``). A forwarder runs once: make a new one to run again.

    ``add_stage()`` adds the user's stages (tapengine._stage), run in order on every batch
    before the built-in wire or switch, which is the last stage and decides every packet the
    others left at ``DEFAULT``. Each batch starts at slot 0 of its ring (the ring is emptied
    after every batch), so a batch never wraps.
    """

    def __cinit__(self, str mode="wire", int budget=64, MacTable table=None, int spin=0,
                  BatchIO io=None, int coalesce_usecs=0):
        self.epfd = -1
        self.stopfd = -1
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if not 1 <= budget <= MAX_BUDGET:
            raise ValueError(f"budget must be between 1 and {MAX_BUDGET}, not {budget}")
        self.mode = MODE_WIRE if mode == "wire" else MODE_SWITCH
        self.budget = budget
        if spin < 0:
            raise ValueError(f"spin must be >= 0, not {spin}")
        self.spin = spin
        if not 0 <= coalesce_usecs <= MAX_COALESCE_USECS:
            raise ValueError(f"coalesce_usecs must be between 0 and {MAX_COALESCE_USECS}, "
                             f"not {coalesce_usecs}")
        self.coalesce_ns = <uint64_t>coalesce_usecs * 1000
        self.io = io
        if self.mode == MODE_SWITCH:
            self.table = table if table is not None else MacTable()
        elif table is not None:
            raise ValueError("a MAC table is only used in switch mode")
        self._rings = []
        self._port_ios = []
        self._stages = []
        self._port_names = []
        self.failed_stage = -1
        self.builtin = WireStage() if self.mode == MODE_WIRE else SwitchStage(self.table)
        self._verdict = np.full(MAX_BUDGET, VERDICT_DEFAULT, dtype=np.int32)
        cdef int32_t[::1] verdict_view = self._verdict
        self.egress = &verdict_view[0]
        self._stage_counters = np.zeros((MAX_STAGES, N_STAGE_COUNTERS), dtype=np.uint64)
        cdef uint64_t[:, ::1] stage_view = self._stage_counters
        self.stage_counters = &stage_view[0, 0]
        self._counters = np.zeros((MAX_PORTS, N_COUNTERS), dtype=np.uint64)
        self._hist = np.zeros((MAX_PORTS, HIST_BUCKETS), dtype=np.uint64)
        self._loop_stats = np.zeros(LOOP_STATS, dtype=np.uint64)
        self._gso_drops = np.zeros(GSO_REASON_COUNT, dtype=np.uint64)
        cdef uint64_t[::1] gso_view = self._gso_drops
        self.gso_drops = &gso_view[0]
        self._scratch = PacketRing(SCRATCH_SLOTS, SCRATCH_SLOT_SIZE)
        cdef uint64_t[::1] loop_view = self._loop_stats
        self.loop_stats = &loop_view[0]
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise_errno(errno, "creating the forwarder's epoll instance")
        self.stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.stopfd < 0:
            raise_errno(errno, "creating the forwarder's stop eventfd")
        cdef epoll_event event
        event.events = EPOLLIN
        event.data.u64 = STOP_TAG
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.stopfd, &event) < 0:
            raise_errno(errno, "watching the stop eventfd")

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)
        if self.stopfd >= 0:
            close(self.stopfd)
        self._release()

    cdef void _release(self) noexcept:
        # Closes the port fds this forwarder dup()ed and stops counting as a user of its rings;
        # once (a second call finds nothing left).
        cdef int k
        cdef PacketRing ring
        cdef PortIO port_io
        cdef Stage stage
        if self._stages is not None and self._rings is not None:
            for stage in self._stages:      # Python stages let go of their views of the rings
                for ring in self._rings:
                    stage.unbind(ring)
        for k in range(self.nports):
            if self.ports[k].fd >= 0:
                close(self.ports[k].fd)
                self.ports[k].fd = -1
        if self._rings is not None:         # None when the GC cleared a cycle first
            for ring in self._rings:
                ring._users -= 1
            self._rings.clear()
        if self._port_ios is not None:
            for port_io in self._port_ios:
                port_io._users -= 1
            self._port_ios.clear()

    def add_port(self, fd, PacketRing ring not None, *, bint vnet_hdr=False, bint l2=True,
                 PortIO port_io=None):
        """Serve ``fd`` (non-blocking, one packet per read/write) through ``ring``; returns its
        index.

        ``port_io``: a port that is not a tun/tap fd (``UdpPortIO``, ...): the forwarder calls its
        receive and send instead of read()/write() and waits on ``port_io.fd``; ``fd`` is then
        None (or a descriptor of the same socket), ``vnet_hdr`` false, and ``l2`` says what the
        frames are (a ``port_io`` that carries only Ethernet frames needs it). The forwarder keeps
        it in use (its ``close()`` raises) until the forwarder's ``close()``.

        ``vnet_hdr`` says the fd carries a 10-byte virtio_net_hdr before every frame; ``l2`` that
        frames are Ethernet (tap), not IP packets (tun). A switch needs ``l2``. The forwarder
        serves its own ``dup()`` of ``fd`` (closed by ``close()``): the caller may close ``fd``
        at any time. It keeps ``ring`` alive and in use (``ring.close()`` and ``resize()`` raise)
        until ``close()``; a ring serves one forwarder.
        """
        if self.ran:
            raise ValueError("cannot add a port to a forwarder that has run")
        if self.epfd < 0:
            raise ValueError("the forwarder is closed")
        cdef int cfd
        if port_io is not None:
            if port_io.fd < 0:
                raise ValueError(f"{port_io!r} is closed")
            if (fd is not None
                    and os.fstat(fd_of(fd)).st_ino != os.fstat(port_io.fd).st_ino):
                raise ValueError("a port with a port_io is served through port_io.fd: pass "
                                 "fd=None, or the socket the port_io was made from")
            if vnet_hdr:
                raise ValueError("a port_io carries no virtio-net header: vnet_hdr=False")
            if port_io.l2 and not l2:
                raise ValueError(f"{port_io!r} carries Ethernet frames: l2=True")
            cfd = port_io.fd
        else:
            cfd = fd_of(fd)
        if self.nports >= (2 if self.mode == MODE_WIRE else MAX_PORTS):
            raise ValueError(f"a {MODES[self.mode]} forwarder takes at most "
                             f"{2 if self.mode == MODE_WIRE else MAX_PORTS} ports")
        if ring.closed:
            raise ValueError("the packet ring is closed")
        if ring._users:
            raise ValueError("the packet ring already serves a forwarder; give each port its own")
        if self.mode == MODE_SWITCH and not l2:
            raise ValueError("a switch forwards Ethernet frames: its ports must be taps")
        if self.nports and self.ports[0].l2 != l2:
            raise ValueError("cannot forward between a tun and a tap port")
        if ring.nslots < self.budget:
            raise ValueError(f"the ring has {ring.nslots} slots, fewer than the budget "
                             f"of {self.budget} packets per batch")
        cdef int index = self.nports, err
        cdef uint64_t[:, ::1] counters = self._counters
        cdef uint64_t[:, ::1] hist = self._hist
        cdef epoll_event event
        event.events = EPOLLIN
        event.data.u64 = index
        cdef int own = fcntl(cfd, F_DUPFD_CLOEXEC, 0)
        if own < 0:
            raise_errno(errno, f"duplicating fd {cfd}")
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, own, &event) < 0:
            err = errno
            close(own)
            raise_errno(err, f"watching fd {cfd}")
        ring.clear()
        ring._users += 1
        self._rings.append(ring)
        self.ports[index].port_io = NULL
        if port_io is not None:
            port_io._users += 1
            self._port_ios.append(port_io)
            self.ports[index].port_io = <PyObject *>port_io
        self.ports[index].fd = own
        self.ports[index].vnet_hdr = vnet_hdr
        self.ports[index].l2 = l2
        self.ports[index].up = 1
        self.ports[index].down_errno = 0
        self.ports[index].failing_errno = 0
        self.ports[index].failing_since_ns = 0
        self.ports[index].ring = <PyObject *>ring
        self.ports[index].counters = &counters[index, 0]
        self.ports[index].hist = &hist[index, 0]
        self.nports += 1
        return index

    def add_stage(self, Stage stage not None, port_names=None):
        """Run ``stage`` on every batch, after the stages added before it and before the
        built-in wire or switch; returns its index (its row of ``stage_counters``). A stage may
        serve several forwarders (a Python stage is then called by one at a time).
        ``port_names`` names the ports in index order for ``Batch.port_name`` (default
        ``port0``, ``port1``, ...)."""
        if self.ran:
            raise ValueError("cannot add a stage to a forwarder that has run")
        if self.nstages >= MAX_STAGES:
            raise ValueError(f"a forwarder runs at most {MAX_STAGES} stages")
        if port_names is not None:
            self._port_names = [str(name) for name in port_names]
        self._stages.append(stage)
        self.stages[self.nstages] = <PyObject *>stage
        self.nstages += 1
        if isinstance(stage, CaptureStage) and self.capture is None:
            self.set_capture(stage)
        return self.nstages - 1

    def set_capture(self, CaptureStage stage):
        """Record every run of frames this forwarder sends (after the send succeeded, the
        software-segmented ones as sent) with ``stage.capture_tx`` (outbound, on the egress
        port's interface); ``None`` stops it. ``add_stage`` calls it for the first
        CaptureStage."""
        if self.ran:
            raise ValueError("cannot change the capture of a forwarder that has run")
        self.capture = stage

    def run(self):
        """Forward until ``stop()``; releases the GIL for the whole time. Runs once.

        Raises ``StageError`` (the stage's exception as its cause) when a stage stopped it."""
        if self.ran:
            raise RuntimeError("this forwarder has already run; make a new one")
        if self.epfd < 0:
            raise ValueError("the forwarder is closed")
        self._bind_stages()
        self.ran = True
        self.running = True
        cdef int err, k
        cdef BatchIO io = self.io
        if io is not None:
            io._users += 1          # its io_uring cannot be closed under the loop
        try:
            if isinstance(io, UringIO):
                # This thread's io_uring knows the ports' fds and ring slabs for the run: no file
                # lookup nor page pinning per operation. Best effort: what the kernel refuses
                # (e.g. pinned memory past RLIMIT_MEMLOCK) goes through plain reads and writes,
                # and an io_uring of another thread fails each batch, as it would anyway.
                fd_ports = [k for k in range(self.nports) if self.ports[k].port_io == NULL]
                try:
                    (<UringIO>io).register([self.ports[k].fd for k in fd_ports],
                                           [self._rings[k] for k in fd_ports])
                except (OSError, RuntimeError):     # refused, or another thread's io_uring
                    pass
            with nogil:
                err = self._loop()
        finally:
            self.running = False
            if isinstance(io, UringIO):
                (<UringIO>io).unregister()
            if io is not None:
                io._users -= 1
        if err == STAGE_FAILED:
            stage = <Stage>self.stages[self.failed_stage]
            error = stage.error()
            error.first_batch = self._stage_counters[self.failed_stage, STAGE_BATCHES] == 1
            raise error
        if err == ALL_DOWN:
            down = ", ".join(f"port {k}: {os.strerror(self.down_errno(k))}"
                             for k in range(self.nports))
            raise_errno(self.down_errno(self.nports - 1), f"every port is down ({down})")
        if err:
            raise_errno(err, "waiting for packets (epoll_wait)")

    cdef _bind_stages(self):
        # Tells every stage which ring serves which port (Python stages make views of them).
        cdef Stage stage
        cdef PacketRing ring
        cdef int k
        if isinstance(self.builtin, WireStage):
            (<WireStage>self.builtin).nports = self.nports
        else:
            (<SwitchStage>self.builtin).nports = self.nports
            (<SwitchStage>self.builtin).ports = &self.ports[0]
        names = list(self._port_names) + [f"port{k}" for k in range(len(self._port_names),
                                                                    self.nports)]
        for stage in self._stages:
            for k in range(self.nports):
                ring = self._rings[k]
                stage.bind(ring, k, names[k], self.ports[k].l2, self.ports[k].vnet_hdr,
                           self._verdict)

    def stop(self):
        """Ask the loop to return; safe from any thread, before or while ``run()`` runs."""
        cdef uint64_t one = 1
        te_atomic_store_int(&self.stopping, 1)
        if self.stopfd >= 0:
            write(self.stopfd, &one, sizeof(one))

    def close(self):
        """Close the epoll fd, the eventfd, the io_uring and the forwarder's own port fds, and
        give the rings back (the caller's fds are the caller's). Raises ``RuntimeError`` while
        ``run()`` runs: nothing the loop uses is closed under it."""
        if self.running:
            raise RuntimeError("the forwarder is running: stop() it and let run() return first")
        self.stop()
        if self.io is not None:
            self.io.close()
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1
        if self.stopfd >= 0:
            close(self.stopfd)
            self.stopfd = -1
        self._release()

    # -- state and counters, readable while the loop runs --------------------------------

    @property
    def nports(self):
        return self.nports

    @property
    def mode(self):
        return MODES[self.mode]

    @property
    def budget(self):
        return self.budget

    @property
    def table(self):
        """The MAC table (switch mode) or None."""
        return self.table

    @property
    def counters(self):
        """``uint64[nports, len(COUNTER_NAMES)]``: the live counters (a view, not a copy)."""
        return self._counters[:self.nports]

    @property
    def histogram(self):
        """``uint64[nports, len(HISTOGRAM_BUCKETS)]``: batches read per port, by size."""
        return self._hist[:self.nports]

    @property
    def gso_drops(self):
        """``uint64[GSO_REASON_COUNT]``: packets refused by header validation or segmentation,
        by ``tapengine._gso.REASONS``."""
        return self._gso_drops

    @property
    def stages(self):
        """The user's stages, in the order they run (the built-in wire or switch after)."""
        return tuple(self._stages)

    @property
    def stage_counters(self):
        """``uint64[nstages, len(STAGE_COUNTER_NAMES)]``: the live counters of each stage."""
        return self._stage_counters[:self.nstages]

    @property
    def passes(self):
        """Passes of the loop over all ports so far."""
        return int(self._loop_stats[STAT_PASSES])

    @property
    def sleeps(self):
        """Times the loop found nothing to do and slept in epoll_wait."""
        return int(self._loop_stats[STAT_SLEEPS])

    @property
    def coalesce_usecs(self):
        """How long the loop waits for a batch after a wakeup that found little (0: never)."""
        return self.coalesce_ns // 1000

    @property
    def coalesced(self):
        """``(waits, idle)``: coalescing waits so far, and those after which nothing had come."""
        return (int(self._loop_stats[STAT_COALESCED]), int(self._loop_stats[STAT_COALESCED_IDLE]))

    def port_up(self, int index):
        self._check_index(index)
        return bool(te_atomic_load_int(&self.ports[index].up))

    def down_errno(self, int index):
        """Why port ``index`` went down (an errno), or 0 while it is up."""
        self._check_index(index)
        if te_atomic_load_int(&self.ports[index].up):
            return 0
        return te_atomic_load_int(&self.ports[index].down_errno)

    def _check_index(self, int index):
        if not 0 <= index < self.nports:
            raise IndexError(f"port index {index} out of range (0..{self.nports - 1})")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"<Forwarder {MODES[self.mode]} {self.nports} ports, budget {self.budget}>"

    # -- the loop ------------------------------------------------------------------------

    cdef int _loop(self) noexcept nogil:
        # A pass serves the ports that may hold packets: those epoll_wait reported readable, and
        # those whose last batch filled the budget or whose last read failed. A receive that
        # stops short of the budget has seen EAGAIN (its queue is empty), so once no port filled
        # its budget the loop goes back to epoll_wait instead of reading every port once more to
        # find it empty: epoll is level-triggered and returns at once for anything that arrived
        # meanwhile, so a busy worker never sleeps. ``spin`` adds that many passes over every
        # port before sleeping.
        #
        # Coalescing (coalesce_ns > 0), a NIC's interrupt moderation for a userspace loop: at
        # moderate rates each wakeup finds one packet and the wakeup, not the copy, is the cost.
        # After a pass that moved fewer than COALESCE_BELOW packets the worker sleeps coalesce_ns
        # (timer slack lowered so the sleep is that long), then looks without blocking. A wait
        # that catches nothing says the traffic is sparse: the next waits are skipped, a number
        # that doubles with each idle wait (to COALESCE_BACKOFF_MAX) and resets when one pays.
        cdef epoll_event events[MAX_PORTS + 1]
        cdef uint8_t ready[MAX_PORTS]
        cdef uint32_t moved, got, idle = 0, skip = 0, backoff = 0
        cdef int i, n, k, tag, serving = 1
        cdef bint more, everyone = True
        cdef int slack = 0
        cdef timespec pause
        if self.coalesce_ns:
            slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
            prctl(PR_SET_TIMERSLACK, COALESCE_SLACK_NS, 0, 0, 0)
            pause.tv_sec = self.coalesce_ns // 1000000000
            pause.tv_nsec = self.coalesce_ns % 1000000000
        memset(ready, 0, sizeof(ready))
        while not te_atomic_load_int(&self.stopping):
            moved = 0
            serving = 0
            more = False
            for i in range(self.nports):
                if self.failed_stage >= 0:
                    break           # a stage failed: never call it again, not even this pass
                if self.ports[i].up:
                    if everyone or ready[i]:
                        got = self._serve(i)
                        moved += got
                        # a full batch: there may be more; a failing read: try it again (it
                        # goes down after FAILING_NS, instead of waiting for a wakeup forever)
                        ready[i] = got >= self.budget or self.ports[i].failing_errno != 0
                        more = more or ready[i]
                    serving += self.ports[i].up     # still up after this pass
            everyone = False
            if self.failed_stage >= 0:
                break               # a stage asked to stop: run() raises its error
            if serving == 0 and self.nports:
                break               # nothing left to serve, ever
            self.loop_stats[STAT_PASSES] += 1
            if more:
                idle = 0
                continue            # busy: keep draining, never sleep
            if moved == 0:
                idle += 1
                if idle <= self.spin:
                    everyone = True
                    continue        # look again a few times before paying for a sleep
            idle = 0
            n = 0
            if moved and moved < COALESCE_BELOW and self.coalesce_ns:
                if skip:
                    skip -= 1
                else:
                    clock_nanosleep(CLOCK_MONOTONIC, 0, &pause, NULL)
                    self.loop_stats[STAT_COALESCED] += 1
                    n = epoll_wait(self.epfd, events, MAX_PORTS + 1, 0)
                    if n == 0:
                        self.loop_stats[STAT_COALESCED_IDLE] += 1
                        if backoff < COALESCE_BACKOFF_MAX:
                            backoff = 2 * backoff + 1
                        skip = backoff
                    else:
                        backoff = 0
            if n == 0:
                self.loop_stats[STAT_SLEEPS] += 1
                n = epoll_wait(self.epfd, events, MAX_PORTS + 1, -1)
            if n < 0:
                if errno == EINTR:
                    continue
                n = errno
                if self.coalesce_ns:
                    prctl(PR_SET_TIMERSLACK, slack, 0, 0, 0)
                return n
            for k in range(n):
                tag = <int>events[k].data.u64
                if tag == STOP_TAG or not self.ports[tag].up:
                    continue
                ready[tag] = 1
                if events[k].events & (EPOLLERR | EPOLLHUP):
                    self._serve(tag)        # reads the error the device reports, if any
                    if self.ports[tag].port_io == NULL:
                        self._port_down(tag, EPIPE)
                    # A socket's EPOLLERR is an error queued on it (an ICMP error for a
                    # connected UDP socket, its peer restarting): the receive above counted
                    # it and cleared it, and the port goes on.
        if self.coalesce_ns:
            prctl(PR_SET_TIMERSLACK, slack, 0, 0, 0)
        if self.failed_stage >= 0:
            return STAGE_FAILED
        return ALL_DOWN if serving == 0 and self.nports else 0

    cdef uint32_t _serve(self, int i) noexcept nogil:
        return self._serve_ring(i, <PacketRing>self.ports[i].ring)

    @cython.boundscheck(False)
    cdef uint32_t _serve_ring(self, int i, PacketRing ring) noexcept nogil:
        cdef Port *port = &self.ports[i]
        cdef int err = 0
        cdef uint32_t first = ring.tail
        cdef uint32_t n
        cdef uint64_t truncated = ring.truncated
        if port.port_io != NULL:
            n = (<PortIO>port.port_io).recv(ring, self.budget, &err)
        else:
            n = ring_recv_via(self.io, port.fd, ring, self.budget, port.vnet_hdr, &err)
        cdef uint32_t k
        cdef uint64_t nbytes = 0
        if ring.truncated != truncated:     # frames too long for a slot, dropped by the receive
            port.counters[DROP_TRUNCATED] += ring.truncated - truncated
        if n:
            for k in range(n):
                nbytes += ring_len(ring, first + k)[0]
            port.counters[RX_PACKETS] += n
            port.counters[RX_BYTES] += nbytes
            port.counters[RX_BATCHES] += 1
            port.hist[_bucket(n)] += 1
            port.failing_errno = 0
            # A failed stage stops the engine: its batch is dropped, each packet by its verdict
            # (the failed stage's DROP for all still on their way), counted as every drop is.
            self._run_stages(i, ring, first, n)
            self._dispatch(i, ring, first, n)
            # Every packet was sent or counted as dropped: the next batch starts at slot 0, so
            # no batch wraps the ring (a stage's views of it are plain slices).
            ring.head = ring.tail = 0
        if err:
            if _device_gone(err) or err == EIO:
                self._port_down(i, err)
            else:
                port.counters[RX_ERRORS] += 1
                port.counters[LAST_ERRNO] = err
                # a socket's queued ICMP errors may keep coming while its peer is away (each
                # send brings one back): counted, but never a read that takes the port down
                if port.port_io == NULL or not _queued_socket_error(err):
                    self._read_failed(i, err)
        elif n == 0:
            port.failing_errno = 0      # EAGAIN: the fd works, there is just nothing to read
        return n

    cdef void _read_failed(self, int i, int err) noexcept nogil:
        # A read of port i failed with ``err`` (not a vanished device). The same errno for
        # FAILING_NS with nothing read in between will not go away by itself (a dead io_uring,
        # EBUSY): the port goes down with it, instead of the loop spinning on a readable fd.
        cdef Port *port = &self.ports[i]
        cdef uint64_t now = _now_ns()
        if port.failing_errno != err:
            port.failing_errno = err
            port.failing_since_ns = now
        elif <int64_t>(now - port.failing_since_ns) >= <int64_t>FAILING_NS:
            self._port_down(i, err)

    cdef int _run_stages(self, int i, PacketRing ring, uint32_t first, uint32_t n) noexcept nogil:
        # Every verdict starts DEFAULT; the user's stages run in order, each checked after its
        # call; then the headers of what is still to be sent are validated, and the built-in
        # wire or switch decides what is still DEFAULT.
        cdef uint32_t k
        cdef int s
        cdef uint64_t start
        cdef uint64_t *row
        for k in range(n):
            self.egress[k] = VERDICT_DEFAULT
        for s in range(self.nstages):
            row = self.stage_counters + s * N_STAGE_COUNTERS
            memcpy(self.before, self.egress, n * sizeof(int32_t))
            start = _clock_ns()
            if _process(<Stage>self.stages[s], i, ring, first, n, self.egress) < 0:
                row[STAGE_NS] += _clock_ns() - start
                self._drop_failed_batch(s, n)
                return -1
            row[STAGE_NS] += _clock_ns() - start
            row[STAGE_BATCHES] += 1
            row[STAGE_SEEN] += n
            self._check_stage(s, ring, first, n)
        if self.ports[i].vnet_hdr:
            self._check_headers(i, ring, first, n)
        return self.builtin.process(i, ring, first, n, self.egress)

    cdef void _drop_failed_batch(self, int s, uint32_t n) noexcept nogil:
        # Stage s failed on this batch and the engine stops. What the stage half-wrote is
        # ignored: every packet still on its way becomes a DROP counted under its name (and as
        # filtered on the port, as any DROP), so the stage's counters and the port's agree;
        # what an earlier stage dropped or misdirected stays counted as that stage's.
        cdef uint64_t *row = self.stage_counters + s * N_STAGE_COUNTERS
        cdef uint32_t k
        cdef int32_t v
        self.failed_stage = s
        row[STAGE_BATCHES] += 1
        row[STAGE_SEEN] += n
        for k in range(n):
            v = self.before[k]
            if v == VERDICT_DROP or v == VERDICT_MISDIRECTED or v == VERDICT_INVALID:
                self.egress[k] = v
            else:
                self.egress[k] = VERDICT_DROP
                row[STAGE_DROPPED] += 1

    cdef void _check_stage(self, int s, PacketRing ring, uint32_t first, uint32_t n) noexcept nogil:
        # Counts the verdicts stage s changed; one naming no port becomes MISDIRECTED, a length
        # it left outside the slot makes the packet INVALID: both dropped, never sent elsewhere.
        cdef uint64_t *row = self.stage_counters + s * N_STAGE_COUNTERS
        cdef uint32_t k
        cdef int32_t v
        for k in range(n):
            v = self.egress[k]
            if v == self.before[k]:
                continue
            if v == VERDICT_DROP:
                row[STAGE_DROPPED] += 1
            elif v == VERDICT_FLOOD or 0 <= v < self.nports:
                row[STAGE_REDIRECTED] += 1
            elif v != VERDICT_DEFAULT:
                self.egress[k] = VERDICT_MISDIRECTED
                row[STAGE_MISDIRECTED] += 1
        k = ring_lengths_ok(ring, first, n)
        while k < n:
            if not ring_slot_ok(ring, first + k) and self.egress[k] != VERDICT_DROP:
                self.egress[k] = VERDICT_INVALID
                row[STAGE_INVALID] += 1
            k += 1

    @cython.boundscheck(False)
    cdef void _check_headers(self, int i, PacketRing ring, uint32_t first,
                             uint32_t n) noexcept nogil:
        # Headers the kernel gave us (or a stage rewrote) are checked before anything is written
        # with them; an all-zero header (no GSO, no checksum to complete) needs nothing.
        cdef uint32_t k, index
        cdef gso_info info
        cdef int reason
        for k in range(n):
            if self.egress[k] < VERDICT_FLOOD or self.egress[k] == VERDICT_DROP:
                continue                            # dropped already
            index = first + k
            if ring_hdr(ring, index)[0] or ring_hdr(ring, index)[1]:
                reason = gso_validate(ring_hdr(ring, index), ring_frame(ring, index),
                                      ring_len(ring, index)[0], self.ports[i].l2, &info)
                if reason:
                    self.egress[k] = VERDICT_BAD_HEADER
                    self.gso_drops[reason] += 1
                elif info.gso_type != VNET_GSO_NONE:
                    gso_store_hdr_len(ring_hdr(ring, index), info.hdr_len)

    cdef void _dispatch(self, int i, PacketRing ring, uint32_t first, uint32_t n) noexcept nogil:
        # Deliver the batch by verdict, runs of packets for the same port in one ring_send.
        cdef uint32_t k = 0, run
        cdef int32_t e
        cdef int o
        cdef bint sent
        cdef uint64_t *counters = self.ports[i].counters
        while k < n:
            e = self.egress[k]
            if e >= 0 and self.ports[e].up:     # e < nports: checked after each stage
                run = 1
                while k + run < n and self.egress[k + run] == e:
                    run += 1
                self._deliver(i, e, ring, first + k, run)
                k += run
                continue
            if e >= 0:
                self.ports[e].counters[DROP_PORT_DOWN] += 1
            elif e == VERDICT_FILTERED or e == VERDICT_DROP:
                counters[DROP_FILTERED] += 1
            elif e == VERDICT_MALFORMED or e == VERDICT_INVALID:
                counters[DROP_MALFORMED] += 1
            elif e == VERDICT_BAD_HEADER:
                counters[DROP_BAD_HEADER] += 1
            elif e == VERDICT_NO_EGRESS or e == VERDICT_MISDIRECTED:
                counters[DROP_NO_EGRESS] += 1
            elif e == VERDICT_BAD_SRC_MAC:
                counters[DROP_BAD_SRC_MAC] += 1
            elif e == VERDICT_RESERVED_GROUP:
                counters[DROP_RESERVED_GROUP] += 1
            else:
                # FLOOD: unknown unicast (or learned on a port now down), broadcast, multicast,
                # or a stage's wish
                counters[FLOODED] += 1
                sent = False
                for o in range(self.nports):
                    if o != i and self.ports[o].up:
                        self._deliver(i, o, ring, first + k, 1)
                        sent = True
                if not sent:
                    counters[DROP_NO_EGRESS] += 1
            k += 1

    cdef void _deliver(self, int i, int o, PacketRing ring, uint32_t first,
                       uint32_t count) noexcept nogil:
        # Send packets [first, first + count) of port i's ring out of port o.
        cdef uint32_t k, run_start
        if not self.ports[i].vnet_hdr or self.ports[o].vnet_hdr:
            self._send_run(o, ring, first, count)   # headers pass through unchanged
            return
        # From a vnet port to a plain one: superframes and partial checksums need software help.
        run_start = first
        for k in range(first, first + count):
            if _needs_segmentation(ring_hdr(ring, k)):
                self._send_run(o, ring, run_start, k - run_start)
                self._segment_and_send(i, o, ring, k)
                run_start = k + 1
        self._send_run(o, ring, run_start, first + count - run_start)

    cdef void _send_run(self, int o, PacketRing ring, uint32_t first,
                        uint32_t count) noexcept nogil:
        cdef Port *out = &self.ports[o]
        cdef uint32_t sent, k
        cdef uint64_t nbytes
        cdef int err
        while count:
            if out.port_io != NULL:
                sent = (<PortIO>out.port_io).send(ring, first, count, &err)
            else:
                sent = ring_send_via(self.io, out.fd, ring, first, count, out.vnet_hdr, &err)
            if sent:
                nbytes = 0
                for k in range(first, first + sent):
                    nbytes += ring_len(ring, k)[0]
                out.counters[TX_PACKETS] += sent
                out.counters[TX_BYTES] += nbytes
                if self.capture is not None:        # --pcap: outbound, as sent
                    self.capture.capture_tx(o, ring, first, sent)
                first += sent
                count -= sent
            if count == 0:
                return
            if err == 0:                            # EAGAIN: the egress is full
                out.counters[DROP_FULL] += count
                return
            out.counters[LAST_ERRNO] = err
            if _device_gone(err):
                self._port_down(o, err)
                out.counters[DROP_PORT_DOWN] += count
                return
            if err == EIO:                          # link down: every write would fail the same
                out.counters[DROP_LINK_DOWN] += count
                return
            out.counters[DROP_TX_ERROR] += 1        # this packet is refused; try the next
            first += 1
            count -= 1

    cdef void _segment_and_send(self, int i, int o, PacketRing ring, uint32_t index) noexcept nogil:
        # Software segmentation (pyx/gso.pyx): the superframe (or partial checksum) at ``index``
        # becomes plain MTU frames with every checksum complete, in the scratch ring, then goes
        # out of port o like any other run. Each segment keeps the superframe's peer address (a
        # stage may have set one for a UDP port).
        cdef int made, k
        self._scratch.head = self._scratch.tail = 0
        made = gso_segment(ring_hdr(ring, index), ring_frame(ring, index), ring_len(ring, index)[0],
                           self.ports[i].l2, self._scratch, GSO_OUT_FULL_CSUM)
        if made < 0:
            self.gso_drops[-made] += 1
            self.ports[o].counters[DROP_NEEDS_SEGMENTATION] += 1
            return
        self.ports[o].counters[SEGMENTED] += 1
        for k in range(made):
            memcpy(ring_peer(self._scratch, <uint32_t>k), ring_peer(ring, index),
                   sizeof(te_sockaddr))
        self._send_run(o, self._scratch, 0, <uint32_t>made)
        self._scratch.head = self._scratch.tail = 0

    cdef void _port_down(self, int i, int err) noexcept nogil:
        cdef Port *port = &self.ports[i]
        if not port.up:
            return
        te_atomic_store_int(&port.down_errno, err)
        te_atomic_store_int(&port.up, 0)    # after down_errno: a reader that sees it down sees why
        port.counters[LAST_ERRNO] = err
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, port.fd, NULL)
        if self.mode == MODE_SWITCH:
            pthread_mutex_lock(&self.table.lock)
            self.table.forget_port(i)
            pthread_mutex_unlock(&self.table.lock)
