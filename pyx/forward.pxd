# tapengine._forward: the forwarder (a C loop over ports) and the MAC learning table.
#
# C-level API for other Cython code: a Forwarder serves up to MAX_PORTS ports, each a tun/tap
# queue fd with its own PacketRing; counters are plain uint64 rows next to the port state, one
# row per port, columns in the order of the Counter enum (COUNTER_NAMES in Python).

from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

from tapengine._batchio cimport BatchIO, PortIO
from tapengine._pcapng cimport CaptureStage
from tapengine._ring cimport PacketRing
from tapengine._stage cimport Stage
from tapengine.includes.system cimport pthread_mutex_t


cdef enum:
    MAX_PORTS = 64
    MAX_BUDGET = 256
    HIST_BUCKETS = 9        # batch sizes 1, 2-3, 4-7, ..., 256-511
    MAC_WAYS = 4            # the MAC table is set-associative: 4 entries per bucket
    MAX_STAGES = 16         # user stages per forwarder (the built-in wire/switch comes last)

# Columns of Forwarder._loop_stats (Python: passes, sleeps, coalesced, coalesced_idle).
cdef enum:                  # LoopStat
    STAT_PASSES             # passes over the ports
    STAT_SLEEPS             # blocking epoll_waits (nothing to do)
    STAT_COALESCED          # coalescing waits (a pass found little: wait for a batch to build)
    STAT_COALESCED_IDLE     # coalescing waits after which nothing had arrived
    LOOP_STATS

cdef enum ForwardMode:
    MODE_WIRE = 0
    MODE_SWITCH = 1

# Verdicts of Forwarder.egress[] other than a port index (>= 0): the stages' own
# (VERDICT_DEFAULT, VERDICT_DROP, VERDICT_FLOOD: tapengine._stage) and these, which only the
# forwarder and its built-in stages set (a user stage setting one is counted as misdirected).
cdef enum:
    VERDICT_MALFORMED = -4
    VERDICT_BAD_HEADER = -5
    VERDICT_NO_EGRESS = -6
    VERDICT_BAD_SRC_MAC = -7
    VERDICT_RESERVED_GROUP = -8
    VERDICT_FILTERED = -9       # switch: the destination sits behind the ingress port
    VERDICT_MISDIRECTED = -10   # a stage named a port that does not exist
    VERDICT_INVALID = -11       # a stage left a length outside the slot

# Columns of a port's counter row. Drops are counted on the port where the packet was lost:
# the egress port for DROP_FULL .. DROP_NEEDS_SEGMENTATION, the ingress port for the others.
# A flooded packet counts once in the ingress port's FLOODED and once per egress in TX_PACKETS.
cdef enum:                   # Counter
    RX_PACKETS
    RX_BYTES
    RX_BATCHES
    TX_PACKETS
    TX_BYTES
    FLOODED                  # frames this ingress port flooded (unknown, broadcast, multicast)
    SEGMENTED                # superframes this egress port received as segments (software GSO)
    DROP_FULL                # the egress fd would block (EAGAIN)
    DROP_LINK_DOWN           # the egress link is administratively down (write gives EIO)
    DROP_PORT_DOWN           # the egress port is down (its device is gone)
    DROP_TX_ERROR            # any other write error, e.g. a header the kernel refuses (EINVAL)
    DROP_NEEDS_SEGMENTATION  # segmentation toward a port without vnet header failed (gso_drops)
    DROP_BAD_HEADER          # a virtio_net_hdr failed validation (gso_drops says why)
    DROP_FILTERED            # a stage dropped it; switch: the destination is behind the ingress
    DROP_NO_EGRESS           # no other port is up, or a stage named a port that does not exist
    DROP_MALFORMED           # shorter than an Ethernet header (switch), a stage's bad length
    DROP_BAD_SRC_MAC         # switch: source MAC multicast, broadcast or all-zero (never learned)
    DROP_RESERVED_GROUP      # switch: to 01:80:c2:00:00:01-0f, which a bridge never relays
    DROP_TRUNCATED           # longer than the ring's slot: dropped on receive (not in RX_PACKETS)
    RX_ERRORS                # read errors other than EAGAIN and a vanished device
    LAST_ERRNO               # the errno of the last read or write error on this port
    N_COUNTERS


cdef struct Port:
    int fd                   # the forwarder's own dup() of the caller's fd; -1 once closed
    bint vnet_hdr            # each packet carries a virtio_net_hdr (IFF_VNET_HDR)
    bint l2                  # Ethernet frames (tap), not IP packets (tun)
    # ``up`` and ``down_errno`` are written by the worker and read by other threads: only
    # through te_atomic_load_int/te_atomic_store_int (tapengine.includes.atomics).
    int up                   # cleared for good when the device vanishes or its reads keep failing
    int down_errno           # why it went down (EBADFD, ENODEV, EBUSY, ...), 0 while up
    int failing_errno        # the errno every read has failed with since failing_since_ns, or 0
    uint64_t failing_since_ns
    PyObject *ring           # borrowed: Forwarder._rings holds the reference
    PyObject *port_io        # borrowed (Forwarder._port_ios holds it), or NULL: a tun/tap fd
    uint64_t *counters       # this port's row of N_COUNTERS
    uint64_t *hist           # this port's row of HIST_BUCKETS


cdef struct MacEntry:
    uint64_t key             # MAC | VALID_BIT; 0 = empty
    uint64_t seen_ns         # CLOCK_MONOTONIC_COARSE time it was last seen as a source
    int32_t port


cdef class MacTable:
    cdef MacEntry *slots           # nbuckets * MAC_WAYS entries
    cdef uint32_t nbuckets          # power of two; capacity = nbuckets * MAC_WAYS
    cdef uint32_t shift
    cdef uint64_t ageing_ns
    cdef pthread_mutex_t lock       # held by a worker for the learning/lookup pass of a batch
    cdef uint64_t learned, moved, evicted

    # _bucket_of: the first of the MAC_WAYS entries ``mac`` may live in.
    cdef MacEntry *_bucket_of(self, uint64_t mac) noexcept nogil
    # The four below expect the caller to hold ``lock`` and to have read ``now`` (_now_ns())
    # while holding it, so the stamps of one table never go backwards; ages are signed
    # differences all the same.
    # learn: returns nothing of interest; never fails. ``port`` is 0 .. MAX_PORTS - 1.
    cdef void learn(self, uint64_t mac, int32_t port, uint64_t now) noexcept nogil
    # lookup: the port behind ``mac``, or -1 when it is unknown or aged out.
    cdef int32_t lookup(self, uint64_t mac, uint64_t now) noexcept nogil
    cdef void forget_port(self, int32_t port) noexcept nogil
    cdef uint32_t count(self, uint64_t now) noexcept nogil


# The built-in stages, always the last of a forwarder: they decide every verdict still DEFAULT.
cdef class WireStage(Stage):
    cdef int nports             # set by the forwarder before it runs


cdef class SwitchStage(Stage):
    cdef MacTable table
    cdef Port *ports            # the forwarder's (which owns this stage): up or down
    cdef int nports


cdef class Forwarder:
    cdef Port ports[MAX_PORTS]
    cdef int nports
    cdef int mode
    cdef uint32_t budget
    cdef int epfd
    cdef int stopfd
    cdef int stopping               # atomic: set by stop() from any thread
    cdef uint32_t spin             # empty passes before sleeping in epoll_wait
    cdef uint64_t coalesce_ns       # wait this long for a batch after a pass that found little
    cdef bint ran
    cdef bint running
    cdef MacTable table
    cdef BatchIO io                 # the backend (tapengine._batchio); None: readv/writev
    cdef list _rings
    cdef list _port_ios             # the PortIO of each port that has one
    cdef object _counters           # numpy uint64[MAX_PORTS, N_COUNTERS], written by the loop
    cdef object _hist               # numpy uint64[MAX_PORTS, HIST_BUCKETS]
    cdef object _loop_stats         # numpy uint64[LOOP_STATS], see the LoopStat enum
    cdef uint64_t *loop_stats
    cdef object _gso_drops          # numpy uint64[GSO_REASON_COUNT]
    cdef uint64_t *gso_drops
    cdef PacketRing _scratch        # segments of one superframe on their way out
    cdef int32_t *egress            # the verdict per packet of a batch (_verdict's data)
    cdef object _verdict            # numpy int32[MAX_BUDGET]: what Python stages see
    cdef int32_t before[MAX_BUDGET]  # the verdicts before the stage that runs now
    cdef PyObject *stages[MAX_STAGES]   # borrowed: _stages holds the references
    cdef int nstages
    cdef list _stages
    cdef list _port_names
    cdef Stage builtin              # WireStage or SwitchStage, run after the user's stages
    cdef object _stage_counters     # numpy uint64[MAX_STAGES, N_STAGE_COUNTERS]
    cdef uint64_t *stage_counters
    cdef int failed_stage           # the stage that stopped the loop, or -1
    cdef CaptureStage capture       # None, or records every run sent (set_capture)

    # _loop: returns 0 after stop(), an errno from epoll_wait, or ALL_DOWN once no port is up.
    cdef int _loop(self) noexcept nogil
    # _serve: packets taken from port ``i`` in one pass (>= 0).
    cdef uint32_t _serve(self, int i) noexcept nogil
    cdef uint32_t _serve_ring(self, int i, PacketRing ring) noexcept nogil
    # The rest return nothing: every outcome lands in a counter.
    # _run_stages: returns 0, or -1 once a stage asked to stop (failed_stage says which).
    cdef int _run_stages(self, int i, PacketRing ring, uint32_t first, uint32_t n) noexcept nogil
    cdef void _check_stage(self, int s, PacketRing ring, uint32_t first, uint32_t n) noexcept nogil
    # _drop_failed_batch: stage s failed on a batch of n: the packets still on their way become
    # its DROPs (counted under its name); sets failed_stage.
    cdef void _drop_failed_batch(self, int s, uint32_t n) noexcept nogil
    cdef void _check_headers(self, int i, PacketRing ring, uint32_t first,
                             uint32_t n) noexcept nogil
    cdef void _dispatch(self, int i, PacketRing ring, uint32_t first, uint32_t n) noexcept nogil
    cdef void _deliver(self, int i, int o, PacketRing ring, uint32_t first,
                       uint32_t count) noexcept nogil
    cdef void _send_run(self, int o, PacketRing ring, uint32_t first, uint32_t count) noexcept nogil
    cdef void _segment_and_send(self, int i, int o, PacketRing ring,
                                uint32_t index) noexcept nogil
    cdef void _port_down(self, int i, int err) noexcept nogil
    cdef void _read_failed(self, int i, int err) noexcept nogil
    cdef void _release(self) noexcept
    cdef _bind_stages(self)
