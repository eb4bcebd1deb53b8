# tapengine._pktgen: the traffic generator and sink, and their C-level API.
#
# Every generated frame is UDP over IPv4 or IPv6 (behind an Ethernet header on a tap, bare on a
# tun) whose payload starts with an 18-byte probe header, in network byte order:
#
#   offset  size  field
#        0     4  magic     PROBE_MAGIC ("TPG1")
#        4     4  seq       per-flow sequence number, from 0, wrapping at 2**32
#        8     8  sent_ns   CLOCK_MONOTONIC when the frame was prepared (same machine as the sink)
#       16     2  flow      flow id, 0 .. flows - 1 (the UDP source port is src_port + flow)
#
# The rest of the payload is a fixed filler pattern. Only the UDP source port and the probe header
# change from one packet to the next, so the UDP checksum is a per-slot base sum plus those words.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from tapengine._batchio cimport BatchIO
from tapengine._ring cimport PacketRing
from tapengine.includes.system cimport __builtin_clzll, pollfd


cdef enum:
    PROBE_MAGIC = 0x54504731        # "TPG1"
    PROBE_LEN = 18
    HIST_SUB_BITS = 5               # latency histogram: 32 linear sub-buckets per power of two
    HIST_BUCKETS = (64 - HIST_SUB_BITS + 1) << HIST_SUB_BITS


# Generator counters; all uint64 so that the numpy dtype GEN_COUNTERS_DTYPE maps it exactly.
cdef struct gen_counters_t:
    uint64_t packets
    uint64_t bytes
    uint64_t batches
    uint64_t would_block        # writes refused with EAGAIN (retried after poll)
    uint64_t first_ns           # CLOCK_MONOTONIC of the first packet sent, 0 before
    uint64_t last_ns            # CLOCK_MONOTONIC of the last packet sent


# Token bucket in exact integers: tokens are "units x ns", a unit being a packet or a bit.
# Elapsed time adds dt * rate; a packet costs units * 1e9. No drift, no floating point.
cdef struct token_bucket_t:
    uint64_t rate               # units per second; 0 = unlimited
    uint64_t depth              # bucket size in unit-ns
    uint64_t tokens             # unit-ns available now
    uint64_t last_ns            # time of the last refill
    bint bits                   # unit is a bit (cost = 8 x length) rather than a packet


# Sink totals; all uint64 (numpy dtype SINK_COUNTERS_DTYPE).
cdef struct sink_counters_t:
    uint64_t packets            # every frame read
    uint64_t bytes
    uint64_t probe_packets      # frames carrying a probe header
    uint64_t probe_bytes
    uint64_t other_packets      # anything else (ARP, IPv6 ND, foreign UDP ...)
    uint64_t other_bytes
    uint64_t untracked          # probe frames whose flow id is >= max_flows
    uint64_t duplicates
    uint64_t reordered
    uint64_t stale              # older than the duplicate window: counted as reordered too
    uint64_t latency_count
    uint64_t latency_sum_ns
    uint64_t latency_min_ns
    uint64_t latency_max_ns
    uint64_t negative_latency   # sent_ns later than the receive time (clock misuse): not binned
    uint64_t first_ns           # receive time of the first probe frame
    uint64_t last_ns            # receive time of the last probe frame


# One flow of the sink's bounded table (numpy dtype FLOW_DTYPE).
cdef struct sink_flow_t:
    uint64_t received           # probe frames of this flow, duplicates included
    uint64_t duplicates
    uint64_t reordered
    uint64_t highest            # highest sequence number seen, extended to 64 bits
    uint64_t seen               # 0 until the first frame of the flow


cdef class Generator:
    cdef readonly PacketRing ring       # the templates, patched in place before each write
    cdef object _pin                    # a view of the ring: it cannot be freed under us
    cdef object _flow_seq_array         # numpy uint32[flows]: next sequence number per flow
    cdef object _counters_array
    cdef object _csum_array
    cdef uint32_t *flow_seq
    cdef gen_counters_t *counters
    cdef uint32_t *csum_base            # per slot: folded UDP checksum sum without variable words
    cdef token_bucket_t bucket
    cdef readonly uint32_t flows
    cdef readonly uint32_t nused        # slots used: a whole number of size-pattern periods
    cdef readonly uint32_t batch
    cdef readonly bint ipv6
    cdef readonly bint tun
    cdef uint16_t src_port
    cdef uint32_t l4_off                # offset of the UDP header in a frame
    cdef uint32_t pos                   # next slot to send, 0 .. nused - 1
    cdef uint32_t next_flow
    cdef volatile int stop_requested

    cdef int _build(self, list lengths, bytes src_mac, bytes dst_mac, bytes src_ip,
                    bytes dst_ip, uint16_t dst_port) except -1


# The token bucket over ring slots: the generator's templates, and any other ring of frames to
# pace (tapengine._pcapng's replay). A slot's cost is one packet, or its length in bits.
# Sets rate (units per second, 0 = unlimited), unit and depth (``burst`` units, None: 10 ms of
# traffic bounded by one batch and 1024 frames of ``unit_max`` units); returns 0 or raises
# ValueError for a burst smaller than one frame. The bucket starts empty.
cdef int bucket_set(token_bucket_t *bucket, object rate, bint bits, object burst,
                    uint64_t unit_max, uint32_t batch) except -1
# Returns how many of slots [first, first + count) the bucket allows at ``now`` (refilled first).
cdef uint32_t bucket_admit(token_bucket_t *bucket, PacketRing ring, uint32_t first,
                           uint32_t count, uint64_t now) noexcept nogil
# Returns the nanoseconds until the bucket holds the tokens for slot ``slot`` (0 if it does).
cdef uint64_t bucket_wait_ns(token_bucket_t *bucket, PacketRing ring,
                             uint32_t slot) noexcept nogil
# Takes the tokens of slots [first, first + sent); returns 0.
cdef int bucket_spend(token_bucket_t *bucket, PacketRing ring, uint32_t first,
                      uint32_t sent) noexcept nogil
# Sleeps until ``until`` (CLOCK_MONOTONIC ns); returns 0 (an interrupted sleep just returns).
cdef int sleep_until(uint64_t until) noexcept nogil
# Polls pfds[0] (what a loop reads) and pfds[1] (its stop eventfd) until one is readable or
# ``until`` (CLOCK_MONOTONIC ns, after ``now``); returns 1 when the stop fd is readable, else 0
# (an interrupted poll is 0 too), or -1 with errno set.
cdef int wait_or_stop(pollfd *pfds, uint64_t now, uint64_t until) noexcept nogil


# Generator hot path, all without the GIL and without allocation.
# Returns how many of the next ``count`` packets the bucket allows now (0 .. count).
cdef uint32_t gen_admit(Generator gen, uint32_t count, uint64_t now) noexcept nogil
# Patches ``count`` slots from gen.pos onwards (seq, flow, timestamp, checksum); returns count.
cdef uint32_t gen_prepare(Generator gen, uint32_t count) noexcept nogil
# Accounts ``sent`` of ``prepared`` patched packets as written and rolls back the rest;
# returns sent.
cdef uint32_t gen_commit(Generator gen, uint32_t prepared, uint32_t sent,
                         uint64_t now) noexcept nogil
# Writes packets until ``limit`` packets, ``deadline`` (CLOCK_MONOTONIC ns, 0 = none) or a stop
# request, through ``io`` (tapengine._batchio: writev when it is None); returns packets written,
# with 0 or the errno that ended the run in *err.
cdef uint64_t gen_run(Generator gen, BatchIO io, int fd, bint vnet_hdr, uint64_t limit,
                      uint64_t deadline, int *err) noexcept nogil


cdef class Sink:
    cdef readonly PacketRing ring
    cdef object _counters_array
    cdef object _flows_array
    cdef object _window_array
    cdef object _hist_array
    cdef sink_counters_t *counters
    cdef sink_flow_t *flow_table
    cdef uint64_t *windows              # max_flows x window_words bitmaps of recent seq numbers
    cdef uint64_t *hist
    cdef readonly uint32_t max_flows
    cdef readonly uint32_t window       # bits of duplicate window per flow (a multiple of 64)
    cdef readonly bint tun
    cdef int stop_fd                    # eventfd: stop() wakes a sink blocked in poll()
    cdef volatile int stop_requested


# Sink hot path. Accounts frames [first, first + count) of ``ring`` received at ``now``;
# returns count, or the offset of the first frame whose length exceeds ring.slot_size (it and
# the rest are not accounted: see tapengine._ring's safety boundary).
cdef uint32_t sink_consume(Sink sink, PacketRing ring, uint32_t first, uint32_t count,
                           uint64_t now) noexcept nogil
# Reads and accounts until ``limit`` probe frames, ``deadline``, ``idle_ns`` without a frame after
# the first probe, or a stop request, through ``io`` (readv when it is None); returns
# frames read, with 0 or the ending errno in *err.
cdef uint64_t sink_run(Sink sink, BatchIO io, int fd, bint vnet_hdr, uint32_t budget,
                       uint64_t limit, uint64_t deadline, uint64_t idle_ns,
                       int *err) noexcept nogil


# Index of the latency histogram bucket holding ``ns`` (0 .. HIST_BUCKETS - 1): exact below 32 ns,
# then 32 linear sub-buckets per power of two (a relative width of at most 1/32).
cdef inline uint32_t hist_index(uint64_t ns) noexcept nogil:
    cdef int exponent
    if ns < (1 << HIST_SUB_BITS):
        return <uint32_t>ns
    exponent = 63 - __builtin_clzll(ns)
    return (<uint32_t>(exponent - HIST_SUB_BITS + 1) << HIST_SUB_BITS) | \
        <uint32_t>((ns >> (exponent - HIST_SUB_BITS)) & ((1 << HIST_SUB_BITS) - 1))


# CLOCK_MONOTONIC in nanoseconds (vDSO: no syscall). Never fails for this clock.
cdef inline uint64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000ULL + <uint64_t>ts.tv_nsec
