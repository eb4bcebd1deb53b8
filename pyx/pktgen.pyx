# cython: language_level=3, embedsignature=True
"""Traffic generator and sink for tun/tap devices.

The ``Generator`` keeps one prebuilt UDP frame per ring slot (the sizes follow a repeating
pattern) and, before each batched write, patches in place the UDP source port (``src_port`` plus
the flow id), the probe header (sequence number, send time, flow id) and the UDP checksum, which
it updates from a per-slot base sum instead of summing the whole frame. Nothing is allocated per
packet and the write loop runs without the GIL. A token bucket in exact integer arithmetic paces
it at a rate in packets or bits per second.

The ``Sink`` reads frames in batches, recognises probe frames, and keeps per flow (a bounded,
directly indexed table) the highest sequence number, a bitmap window of the sequence numbers just
below it, and counts of duplicates and reorderings; one-way latencies go into a fixed log-linear
histogram. Definitions, per flow:

* a frame whose sequence number was seen before (within the window) is a **duplicate**;
* a frame with a sequence number below the highest seen that is not a duplicate is **reordered**
  (it fills a gap; frames older than the window are counted as reordered and as ``stale``);
* **lost** = highest + 1 - (received - duplicates): sequence numbers from 0 to the highest seen
  that never arrived. Losses after the last frame that arrived are invisible to a sink alone.
"""

cimport cython
from libc.errno cimport EINTR, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, UINT64_MAX
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, TIMER_ABSTIME, clock_nanosleep, timespec
from posix.unistd cimport close, read, write

from tapengine._batchio cimport BatchIO, ring_recv_via, ring_send_via, use_begin, use_end
from tapengine._gso cimport csum_add, csum_fold
from tapengine._ring cimport (
    FRAME_OFFSET, PacketRing, ring_check_lengths, ring_frame, ring_free, ring_fresh, ring_index,
    ring_len, ring_slot, ring_slot_ok,
)
from tapengine.includes.consts cimport (
    ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, VLAN_HLEN,
)
from tapengine.includes.system cimport (
    EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, POLLOUT, eventfd, poll, pollfd,
)
from tapengine.netorder cimport (
    load_be16, load_be32, load_be64, load_host16, store_be16, store_be32, store_be64,
)
from tapengine.syscall cimport fd_of, raise_errno

import numpy as np

MAGIC = PROBE_MAGIC
PROBE_SIZE = PROBE_LEN
HISTOGRAM_BUCKETS = HIST_BUCKETS
HISTOGRAM_SUB_BITS = HIST_SUB_BITS
HISTOGRAM_SUB_BUCKETS = 1 << HIST_SUB_BITS
#: Largest frame the generator builds (a jumbo frame without FCS).
MAX_FRAME = 9216

GEN_COUNTERS_DTYPE = np.dtype([(name, "u8") for name in (
    "packets", "bytes", "batches", "would_block", "first_ns", "last_ns")])
SINK_COUNTERS_DTYPE = np.dtype([(name, "u8") for name in (
    "packets", "bytes", "probe_packets", "probe_bytes", "other_packets", "other_bytes",
    "untracked", "duplicates", "reordered", "stale", "latency_count", "latency_sum_ns",
    "latency_min_ns", "latency_max_ns", "negative_latency", "first_ns", "last_ns")])
FLOW_DTYPE = np.dtype([(name, "u8") for name in (
    "received", "duplicates", "reordered", "highest", "seen")])
assert GEN_COUNTERS_DTYPE.itemsize == sizeof(gen_counters_t)
assert SINK_COUNTERS_DTYPE.itemsize == sizeof(sink_counters_t)
assert FLOW_DTYPE.itemsize == sizeof(sink_flow_t)

cdef enum:
    NS_PER_S = 1000000000
    SPIN_NS = 20000             # shorter waits for tokens are spun, longer ones slept
    MAX_SLEEP_NS = 10000000     # sleep at most 10 ms at a time: stop() is noticed within that
    POLL_MS = 100               # the sink wakes at least this often to check its deadlines
    PROBE_OFF_SEQ = 4
    PROBE_OFF_TS = 8
    PROBE_OFF_FLOW = 16


def monotonic():
    """CLOCK_MONOTONIC in nanoseconds: the clock of the probe timestamps."""
    return monotonic_ns()


# -- token bucket (over ring slots: the generator's templates, the replay's frames) -----------

# Returns the cost in tokens (unit-ns) of the frame in slot ``slot`` of ``ring``.
cdef inline uint64_t bucket_cost(token_bucket_t *bucket, PacketRing ring,
                                 uint32_t slot) noexcept nogil:
    if bucket.bits:
        return <uint64_t>ring_len(ring, slot)[0] * 8 * NS_PER_S
    return NS_PER_S


# Adds the tokens earned since the last refill; returns 0.
cdef inline int bucket_refill(token_bucket_t *bucket, uint64_t now) noexcept nogil:
    cdef uint64_t dt
    if now <= bucket.last_ns:
        return 0
    dt = now - bucket.last_ns
    bucket.last_ns = now
    if dt > bucket.depth / bucket.rate:     # also keeps dt * rate far from overflowing
        bucket.tokens = bucket.depth
    else:
        bucket.tokens += dt * bucket.rate
        if bucket.tokens > bucket.depth:
            bucket.tokens = bucket.depth
    return 0


cdef int bucket_set(token_bucket_t *bucket, object rate, bint bits, object burst,
                    uint64_t unit_max, uint32_t batch) except -1:
    cdef uint64_t depth_units
    rate = int(rate)
    bucket.rate = rate
    bucket.bits = bits
    bucket.tokens = 0
    bucket.last_ns = 0
    if rate == 0:
        bucket.depth = 0
        return 0
    if burst is None:
        # 10 ms of traffic, at least one batch of the largest frames, at most 1024 of them
        # (about what a tap queues by default: a catch-up burst should not overflow it)
        depth_units = rate // 100
        depth_units = min(depth_units, 1024 * unit_max)
        depth_units = max(depth_units, batch * unit_max)
    else:
        depth_units = int(burst)
        if depth_units < unit_max:
            raise ValueError(f"burst must hold at least one frame ({unit_max}), not {burst}")
    bucket.depth = depth_units * NS_PER_S
    return 0


cdef uint32_t bucket_admit(token_bucket_t *bucket, PacketRing ring, uint32_t first,
                           uint32_t count, uint64_t now) noexcept nogil:
    cdef uint32_t n = 0
    cdef uint64_t available
    if bucket.rate == 0:
        return count
    bucket_refill(bucket, now)
    if not bucket.bits:
        available = bucket.tokens // NS_PER_S
        return <uint32_t>available if available < count else count
    available = bucket.tokens
    while n < count and bucket_cost(bucket, ring, first + n) <= available:
        available -= bucket_cost(bucket, ring, first + n)
        n += 1
    return n


cdef uint64_t bucket_wait_ns(token_bucket_t *bucket, PacketRing ring,
                             uint32_t slot) noexcept nogil:
    cdef uint64_t cost = bucket_cost(bucket, ring, slot)
    if bucket.rate == 0 or bucket.tokens >= cost:
        return 0
    return (cost - bucket.tokens + bucket.rate - 1) // bucket.rate


cdef int bucket_spend(token_bucket_t *bucket, PacketRing ring, uint32_t first,
                      uint32_t sent) noexcept nogil:
    cdef uint32_t i
    cdef uint64_t cost
    if bucket.rate == 0:
        return 0
    for i in range(sent):
        cost = bucket_cost(bucket, ring, first + i)
        bucket.tokens = bucket.tokens - cost if bucket.tokens > cost else 0
    return 0


cdef int sleep_until(uint64_t until) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = until // NS_PER_S
    ts.tv_nsec = until % NS_PER_S
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)
    return 0


# -- generator ---------------------------------------------------------------------------------

cdef uint32_t gen_admit(Generator gen, uint32_t count, uint64_t now) noexcept nogil:
    return bucket_admit(&gen.bucket, gen.ring, gen.pos, count, now)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef uint32_t gen_prepare(Generator gen, uint32_t count) noexcept nogil:
    cdef uint32_t i, slot, flow, seq
    cdef uint64_t sent_ns, acc
    cdef uint16_t csum
    cdef uint8_t *l4
    cdef uint8_t *probe
    for i in range(count):
        slot = gen.pos + i
        flow = gen.next_flow
        gen.next_flow = flow + 1 if flow + 1 < gen.flows else 0
        seq = gen.flow_seq[flow]
        gen.flow_seq[flow] = seq + 1
        # at the template's own position: inside the slot whatever Python wrote to its offset
        l4 = ring_slot(gen.ring, slot) + FRAME_OFFSET + gen.l4_off
        probe = l4 + 8
        store_be16(l4, <uint16_t>(gen.src_port + flow))
        store_be32(probe + PROBE_OFF_SEQ, seq)
        store_be16(probe + PROBE_OFF_FLOW, <uint16_t>flow)
        sent_ns = monotonic_ns()
        store_be64(probe + PROBE_OFF_TS, sent_ns)
        # the base sum covers everything else: add the words that changed
        acc = gen.csum_base[slot]
        acc += load_host16(l4)
        acc += load_host16(probe + PROBE_OFF_SEQ) + load_host16(probe + PROBE_OFF_SEQ + 2)
        acc += load_host16(probe + PROBE_OFF_TS) + load_host16(probe + PROBE_OFF_TS + 2)
        acc += load_host16(probe + PROBE_OFF_TS + 4) + load_host16(probe + PROBE_OFF_TS + 6)
        acc += load_host16(probe + PROBE_OFF_FLOW)
        csum = ~csum_fold(acc)
        if csum == 0:
            csum = 0xffff       # 0 means "no checksum" in UDP over IPv4 and is invalid over IPv6
        memcpy(l4 + 6, &csum, 2)
    return count


cdef uint32_t gen_commit(Generator gen, uint32_t prepared, uint32_t sent,
                         uint64_t now) noexcept nogil:
    cdef uint32_t i, _undone, flow
    for i in range(sent):
        gen.counters.bytes += ring_len(gen.ring, gen.pos + i)[0]
    # packets prepared but not written give their sequence numbers back, newest first
    for _undone in range(prepared - sent):
        flow = gen.next_flow - 1 if gen.next_flow > 0 else gen.flows - 1
        gen.next_flow = flow
        gen.flow_seq[flow] -= 1
    if sent:
        gen.counters.packets += sent
        gen.counters.batches += 1
        if gen.counters.first_ns == 0:
            gen.counters.first_ns = now
        gen.counters.last_ns = now
        gen.pos += sent
        if gen.pos >= gen.nused:
            gen.pos = 0
    return sent


cdef uint64_t gen_run(Generator gen, BatchIO io, int fd, bint vnet_hdr, uint64_t limit,
                      uint64_t deadline, int *err) noexcept nogil:
    cdef uint64_t total = 0, now, until, wait
    cdef uint32_t want, n, sent
    cdef pollfd pfd
    err[0] = 0
    pfd.fd = fd
    pfd.events = POLLOUT
    if gen.bucket.last_ns == 0:
        gen.bucket.last_ns = monotonic_ns()     # an empty bucket starts filling now
    while not gen.stop_requested and total < limit:
        now = monotonic_ns()
        if deadline and now >= deadline:
            break
        want = gen.batch
        if want > gen.nused - gen.pos:
            want = gen.nused - gen.pos
        if want > limit - total:
            want = <uint32_t>(limit - total)
        n = gen_admit(gen, want, now)
        if n == 0:
            wait = bucket_wait_ns(&gen.bucket, gen.ring, gen.pos)
            if wait >= SPIN_NS:
                until = now + (wait if wait < MAX_SLEEP_NS else MAX_SLEEP_NS)
                if deadline and until > deadline:
                    until = deadline
                sleep_until(until)
            continue
        gen_prepare(gen, n)
        sent = ring_send_via(io, fd, gen.ring, gen.pos, n, vnet_hdr, err)
        bucket_spend(&gen.bucket, gen.ring, gen.pos, sent)
        gen_commit(gen, n, sent, now)
        total += sent
        if err[0]:
            break
        if sent < n:
            gen.counters.would_block += 1
            if poll(&pfd, 1, 1) < 0 and errno != EINTR:
                err[0] = errno
                break
    gen.stop_requested = 0
    return total


cdef object _pointer_of(object array):
    # the address of a numpy array's data, for C pointers kept beside the array that owns them
    return array.__array_interface__["data"][0]


cdef object _read_only(object array):
    # A live view of ``array`` that Python code cannot write through (the C loops still do).
    view = array.view()
    view.flags.writeable = False
    return view


cdef bint _vnet_of(fd, vnet_hdr) except -1:
    if vnet_hdr is None:
        return bool(getattr(fd, "vnet_hdr", False))
    return bool(vnet_hdr)


cdef uint64_t _deadline(duration) except? 0:
    # Returns the CLOCK_MONOTONIC deadline ``duration`` seconds from now, 0 for none.
    if duration is None:
        return 0
    if duration < 0:
        raise ValueError(f"duration must be >= 0 seconds, not {duration}")
    return monotonic_ns() + <uint64_t>(duration * NS_PER_S) + 1


cdef class Generator:
    """UDP probe frames for a tap (Ethernet) or a tun (IP), written as fast as allowed.

    ``lengths`` is the repeating pattern of frame lengths in bytes as written to the device
    (Ethernet header included on a tap, no FCS). Addresses are packed: MACs 6 bytes, IPs 4 or 16.
    Packet ``k`` belongs to flow ``k % flows`` and leaves from UDP port ``src_port + flow``.

    ``rate`` is in packets per second, or bits per second with ``rate_bits`` (bits of the bytes
    written); 0 means as fast as the device takes them. ``burst`` is the bucket depth in
    packets (or bits): the most that goes out back to back after the generator fell behind.
    """

    def __cinit__(self, lengths, *, bint tun=False, bint ipv6=False,
                  bytes src_mac=b"\x02\x77\x00\x00\x00\x01",
                  bytes dst_mac=b"\x02\x77\x00\x00\x00\x02",
                  bytes src_ip=None, bytes dst_ip=None, int src_port=10000, int dst_port=9,
                  int flows=1, rate=0, bint rate_bits=False, burst=None, int batch=32):
        lengths = [int(length) for length in lengths]
        if not lengths or len(lengths) > 1024:
            raise ValueError("lengths must hold 1 to 1024 frame lengths")
        if not 1 <= flows <= 65536:
            raise ValueError(f"flows must be between 1 and 65536, not {flows}")
        if not 0 <= src_port or src_port + flows - 1 > 65535:
            raise ValueError(f"source ports {src_port}..{src_port + flows - 1} do not fit 0..65535")
        if not 0 <= dst_port <= 65535:
            raise ValueError(f"destination port must be 0..65535, not {dst_port}")
        if not 1 <= batch <= 256:
            raise ValueError(f"batch must be between 1 and 256, not {batch}")
        if len(src_mac) != 6 or len(dst_mac) != 6:
            raise ValueError("MAC addresses are 6 bytes")
        addr_len = 16 if ipv6 else 4
        if src_ip is None:
            src_ip = bytes([0xfd, 0x77] + [0] * 13 + [1]) if ipv6 else bytes([10, 77, 0, 1])
        if dst_ip is None:
            dst_ip = bytes([0xfd, 0x77] + [0] * 13 + [2]) if ipv6 else bytes([10, 77, 0, 2])
        if len(src_ip) != addr_len or len(dst_ip) != addr_len:
            raise ValueError(f"IPv{6 if ipv6 else 4} addresses are {addr_len} bytes")
        if rate < 0:
            raise ValueError(f"rate must be >= 0, not {rate}")
        self.tun = tun
        self.ipv6 = ipv6
        self.flows = flows
        self.batch = batch
        self.src_port = src_port
        self.l4_off = (0 if tun else ETH_HLEN) + (40 if ipv6 else 20)
        minimum = self.l4_off + 8 + PROBE_LEN
        for length in lengths:
            if not minimum <= length <= MAX_FRAME:
                raise ValueError(
                    f"a frame of {length} bytes cannot carry UDP over IPv{6 if ipv6 else 4} and"
                    f" the {PROBE_LEN}-byte probe header on a {'tun' if tun else 'tap'}:"
                    f" lengths must be {minimum}..{MAX_FRAME}"
                )
        nslots = 256
        while nslots < max(len(lengths), batch):
            nslots *= 2
        self.nused = nslots // len(lengths) * len(lengths)
        self.ring = PacketRing(nslots, max(64, max(lengths)))
        self._pin = self.ring.frames
        self._flow_seq_array = np.zeros(flows, dtype=np.uint32)
        self.flow_seq = <uint32_t *><size_t>_pointer_of(self._flow_seq_array)
        self._counters_array = np.zeros(1, dtype=GEN_COUNTERS_DTYPE)
        self.counters = <gen_counters_t *><size_t>_pointer_of(self._counters_array)
        self._csum_array = np.zeros(nslots, dtype=np.uint32)
        self.csum_base = <uint32_t *><size_t>_pointer_of(self._csum_array)
        self._build(lengths, src_mac, dst_mac, src_ip, dst_ip, dst_port)
        self._set_rate(rate, rate_bits, burst, max(lengths))

    cdef int _build(self, list lengths, bytes src_mac, bytes dst_mac, bytes src_ip,
                    bytes dst_ip, uint16_t dst_port) except -1:
        # Writes every slot's template and its checksum base; returns 0.
        cdef uint32_t slot, length, l3_off = self.l4_off - (40 if self.ipv6 else 20)
        cdef uint32_t ip_len, udp_len, i
        cdef uint8_t *frame
        cdef uint8_t *l4
        cdef uint8_t pseudo[40]
        cdef const uint8_t *sip = src_ip
        cdef const uint8_t *dip = dst_ip
        cdef uint32_t addr_len = 16 if self.ipv6 else 4
        cdef uint64_t acc
        cdef uint16_t csum
        for slot in range(self.nused):
            length = lengths[slot % len(lengths)]
            frame = ring_fresh(self.ring, slot)
            memset(frame, 0, self.ring.slot_size)
            ring_len(self.ring, slot)[0] = length
            if not self.tun:
                memcpy(frame, <const uint8_t *>dst_mac, 6)
                memcpy(frame + 6, <const uint8_t *>src_mac, 6)
                store_be16(frame + 12, ETH_P_IPV6 if self.ipv6 else ETH_P_IP)
            ip_len = length - l3_off
            udp_len = length - self.l4_off
            if self.ipv6:
                store_be32(frame + l3_off, 0x60000000)      # version 6, no class, no label
                store_be16(frame + l3_off + 4, udp_len)
                frame[l3_off + 6] = IPPROTO_UDP
                frame[l3_off + 7] = 64                       # hop limit
                memcpy(frame + l3_off + 8, sip, 16)
                memcpy(frame + l3_off + 24, dip, 16)
            else:
                frame[l3_off] = 0x45
                store_be16(frame + l3_off + 2, ip_len)
                store_be16(frame + l3_off + 6, 0x4000)      # don't fragment (so id 0 is fine)
                frame[l3_off + 8] = 64                       # ttl
                frame[l3_off + 9] = IPPROTO_UDP
                memcpy(frame + l3_off + 12, sip, 4)
                memcpy(frame + l3_off + 16, dip, 4)
                csum = ~csum_fold(csum_add(frame + l3_off, 20, 0))
                memcpy(frame + l3_off + 10, &csum, 2)
            l4 = frame + self.l4_off
            store_be16(l4 + 2, dst_port)
            store_be16(l4 + 4, udp_len)
            store_be32(l4 + 8, PROBE_MAGIC)
            for i in range(8 + PROBE_LEN, udp_len):
                l4[i] = <uint8_t>(i * 7)                     # filler: a checksum-visible pattern
            # pseudo-header: addresses, then protocol and UDP length as the RFCs lay them out
            memset(pseudo, 0, sizeof(pseudo))
            memcpy(pseudo, sip, addr_len)
            memcpy(pseudo + addr_len, dip, addr_len)
            if self.ipv6:
                store_be32(pseudo + 32, udp_len)
                store_be32(pseudo + 36, IPPROTO_UDP)
                acc = csum_add(pseudo, 40, 0)
            else:
                pseudo[9] = IPPROTO_UDP
                store_be16(pseudo + 10, udp_len)
                acc = csum_add(pseudo, 12, 0)
            # source port, sequence, timestamp, flow and checksum are 0 here: added per packet
            self.csum_base[slot] = csum_fold(csum_add(l4, udp_len, acc))
        return 0

    def _set_rate(self, rate, bint bits, burst, uint32_t max_length):
        bucket_set(&self.bucket, rate, bits, burst, max_length * 8 if bits else 1, self.batch)

    # -- properties ---------------------------------------------------------------------------

    @property
    def rate(self):
        """Packets (or bits) per second; 0 means unlimited."""
        return self.bucket.rate

    @property
    def rate_bits(self):
        return bool(self.bucket.bits)

    @property
    def burst(self):
        """Bucket depth in packets (or bits)."""
        return self.bucket.depth // NS_PER_S

    @property
    def lengths(self):
        """Frame lengths of the slots in use, in sending order (uint32 array)."""
        return self.ring.lengths[:self.nused].copy()

    @property
    def counters(self):
        """Live read-only view of the counters (``GEN_COUNTERS_DTYPE[1]``)."""
        return _read_only(self._counters_array)

    @property
    def flow_seq(self):
        """Live read-only view: the next sequence number of each flow (``uint32[flows]``)."""
        return _read_only(self._flow_seq_array)

    # -- producing packets --------------------------------------------------------------------

    def send(self, fd, *, count=None, duration=None, vnet_hdr=None, BatchIO io=None):
        """Write packets to ``fd`` until ``count`` are written or ``duration`` seconds pass.

        ``fd`` is an int or has ``fileno()`` (a ``TunQueue``, whose ``vnet_hdr`` is used unless
        given). With neither limit it runs until ``stop()``. Returns the packets written by this
        call; sequence numbers, counters and the token bucket carry over between calls. Errors
        raise the matching ``OSError`` (``completed`` = packets written by this call). ``io``: the
        backend (``tapengine.open_batch_io()``; a ``UringIO`` belongs to one thread), None: writev.
        """
        if count is not None and count < 0:  # before it becomes a uint64_t below
            raise ValueError(f"count must be >= 0, not {count}")
        cdef int cfd = fd_of(fd)
        cdef bint cvnet = _vnet_of(fd, vnet_hdr)
        cdef uint64_t limit = UINT64_MAX if count is None else count
        cdef uint64_t deadline = _deadline(duration)
        cdef uint64_t sent
        cdef int err = 0
        self.ring._check_open()
        ring_check_lengths(self.ring, 0, self.nused)    # the templates, writable as gen.ring
        use_begin(self.ring, io)
        try:
            with nogil:
                sent = gen_run(self, io, cfd, cvnet, limit, deadline, &err)
        finally:
            use_end(self.ring, io)
        if err:
            raise_errno(err, f"writing generated frames to fd {cfd}", sent)
        return sent

    def fill(self, PacketRing ring not None, count):
        """Generate the next ``count`` frames (ignoring the rate) and copy them to ``ring``'s tail.

        For tests and tools: the frames are exactly what ``send()`` would have written, and they
        count as generated. Returns the free-running index of the first frame copied.
        """
        ring._check_open()
        if count < 0 or count > ring_free(ring):
            raise ValueError(f"cannot fill {count} frames: the ring has {ring_free(ring)} free")
        if ring.slot_size < self.ring.slot_size:
            raise ValueError(f"ring slots of {ring.slot_size} bytes cannot hold these frames")
        ring_check_lengths(self.ring, 0, self.nused)    # the templates, writable as gen.ring
        cdef uint32_t first = ring.tail, left = count, n, i
        cdef uint64_t now
        while left:
            n = min(left, self.nused - self.pos, self.batch)
            now = monotonic_ns()
            gen_prepare(self, n)
            for i in range(n):
                memcpy(ring_fresh(ring, ring.tail), ring_frame(self.ring, self.pos + i),
                       ring_len(self.ring, self.pos + i)[0])
                ring_len(ring, ring.tail)[0] = ring_len(self.ring, self.pos + i)[0]
                ring.tail += 1
            gen_commit(self, n, n, now)
            left -= n
        return first

    def stop(self):
        """Make a running ``send()`` return soon (within 10 ms); safe from any thread."""
        self.stop_requested = 1

    def __repr__(self):
        kind = "tun" if self.tun else "tap"
        rate = "unlimited" if not self.bucket.rate else (
            f"{self.bucket.rate} {'bit' if self.bucket.bits else 'pkt'}/s")
        return (f"<Generator {kind} IPv{6 if self.ipv6 else 4} {self.flows} flow(s),"
                f" {self.nused} slots, {rate}>")


# -- sink --------------------------------------------------------------------------------------

# Returns the offset of the UDP payload of a probe frame, or 0 when the frame is not one.
cdef inline uint32_t probe_offset(const uint8_t *frame, uint32_t length, bint tun) noexcept nogil:
    cdef uint32_t off = 0, l4
    cdef uint16_t ethertype
    cdef uint8_t version
    if not tun:
        if length < ETH_HLEN:
            return 0
        ethertype = load_be16(frame + 12)
        off = ETH_HLEN
        if ethertype == ETH_P_8021Q and length >= ETH_HLEN + VLAN_HLEN:
            ethertype = load_be16(frame + 16)
            off += VLAN_HLEN
        if ethertype != ETH_P_IP and ethertype != ETH_P_IPV6:
            return 0
    if length < off + 20:
        return 0
    version = frame[off] >> 4
    if version == 4:
        if frame[off + 9] != IPPROTO_UDP or load_be16(frame + off + 6) & 0x3fff:
            return 0        # not UDP, or a fragment
        l4 = off + (frame[off] & 0x0f) * 4
    elif version == 6:
        if frame[off + 6] != IPPROTO_UDP:
            return 0
        l4 = off + 40
    else:
        return 0
    if length < l4 + 8 + PROBE_LEN or load_be32(frame + l4 + 8) != PROBE_MAGIC:
        return 0
    return l4 + 8


# Records sequence number ``seq`` of ``flow``; returns 0.
@cython.cdivision(True)
cdef inline int track_sequence(Sink sink, uint32_t flow_id, uint32_t seq) noexcept nogil:
    cdef sink_flow_t *flow = sink.flow_table + flow_id
    cdef uint64_t *bitmap = sink.windows + <size_t>flow_id * (sink.window // 64)
    cdef uint64_t ext, distance, bit, j
    cdef int32_t delta
    flow.received += 1
    if not flow.seen:
        # flows start at sequence 0: treat the first frame as advancing from "-1"
        flow.seen = 1
        ext = seq
        distance = ext + 1
    else:
        delta = <int32_t>(seq - <uint32_t>flow.highest)
        if delta < 0 and <uint64_t>(-<int64_t>delta) > flow.highest:
            sink.counters.stale += 1           # before sequence 0: a stray, count it as late
            sink.counters.reordered += 1
            flow.reordered += 1
            return 0
        ext = flow.highest + delta
        distance = ext - flow.highest if delta > 0 else 0
    if distance:
        # advance: forget the window slots of the numbers skipped and of the new highest
        if distance >= sink.window:
            memset(bitmap, 0, sink.window // 8)
        else:
            for j in range(1, distance + 1):
                bit = (ext - distance + j) % sink.window
                bitmap[bit >> 6] &= ~(1ULL << (bit & 63))
        bit = ext % sink.window
        bitmap[bit >> 6] |= 1ULL << (bit & 63)
        flow.highest = ext
        return 0
    distance = flow.highest - ext
    if distance >= sink.window:
        sink.counters.stale += 1
        sink.counters.reordered += 1
        flow.reordered += 1
        return 0
    bit = ext % sink.window
    if bitmap[bit >> 6] & (1ULL << (bit & 63)):
        sink.counters.duplicates += 1
        flow.duplicates += 1
    else:
        bitmap[bit >> 6] |= 1ULL << (bit & 63)
        sink.counters.reordered += 1
        flow.reordered += 1
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef uint32_t sink_consume(Sink sink, PacketRing ring, uint32_t first, uint32_t count,
                           uint64_t now) noexcept nogil:
    cdef uint32_t i, length, payload, flow_id
    cdef const uint8_t *frame
    cdef uint64_t sent_ns, latency
    cdef sink_counters_t *c = sink.counters
    for i in range(count):
        if not ring_slot_ok(ring, first + i):
            return i        # a length or offset past the slot (see ring.pxd): stop, never read
        frame = ring_frame(ring, first + i)
        length = ring_len(ring, first + i)[0]
        c.packets += 1
        c.bytes += length
        payload = probe_offset(frame, length, sink.tun)
        if payload == 0:
            c.other_packets += 1
            c.other_bytes += length
            continue
        c.probe_packets += 1
        c.probe_bytes += length
        if c.first_ns == 0:
            c.first_ns = now
        c.last_ns = now
        sent_ns = load_be64(frame + payload + PROBE_OFF_TS)
        if sent_ns > now:
            c.negative_latency += 1
        else:
            latency = now - sent_ns
            sink.hist[hist_index(latency)] += 1
            c.latency_count += 1
            c.latency_sum_ns += latency
            if latency < c.latency_min_ns or c.latency_count == 1:
                c.latency_min_ns = latency
            if latency > c.latency_max_ns:
                c.latency_max_ns = latency
        flow_id = load_be16(frame + payload + PROBE_OFF_FLOW)
        if flow_id >= sink.max_flows:
            c.untracked += 1
            continue
        track_sequence(sink, flow_id, load_be32(frame + payload + PROBE_OFF_SEQ))
    return count


cdef int wait_or_stop(pollfd *pfds, uint64_t now, uint64_t until) noexcept nogil:
    cdef int got = poll(pfds, 2, <int>((until - now + 999999) // 1000000))
    if got < 0:
        return 0 if errno == EINTR else -1
    return 1 if pfds[1].revents else 0


cdef uint64_t sink_run(Sink sink, BatchIO io, int fd, bint vnet_hdr, uint32_t budget,
                       uint64_t limit, uint64_t deadline, uint64_t idle_ns,
                       int *err) noexcept nogil:
    cdef uint64_t total = 0, now, last_rx = 0, probes_at_start = sink.counters.probe_packets
    cdef uint64_t until
    cdef uint32_t n
    cdef int got
    cdef uint64_t drained
    cdef pollfd pfds[2]
    err[0] = 0
    pfds[0].fd = fd
    pfds[0].events = POLLIN
    pfds[1].fd = sink.stop_fd
    pfds[1].events = POLLIN
    while not sink.stop_requested:
        if sink.counters.probe_packets - probes_at_start >= limit:
            break
        n = ring_recv_via(io, fd, sink.ring, budget, vnet_hdr, err)
        now = monotonic_ns()
        if n:
            sink_consume(sink, sink.ring, sink.ring.head, n, now)
            sink.ring.head += n
            total += n
            if sink.counters.probe_packets != probes_at_start:
                last_rx = now
        if err[0]:
            break
        if deadline and now >= deadline:
            break
        if idle_ns and last_rx and now - last_rx >= idle_ns:
            break
        if n:
            continue
        until = now + POLL_MS * 1000000ULL
        if deadline and deadline < until:
            until = deadline
        if idle_ns and last_rx and last_rx + idle_ns < until:
            until = last_rx + idle_ns
        got = wait_or_stop(pfds, now, until)
        if got < 0:
            err[0] = errno
            break
        if got:
            break
    read(sink.stop_fd, &drained, 8)     # reset the eventfd (EAGAIN when it was not written)
    sink.stop_requested = 0
    return total


cdef class Sink:
    """Counts frames read from a tap or tun, tracks probe flows and measures one-way latency.

    ``max_flows`` bounds the flow table (flow ids at or above it are counted as ``untracked``);
    ``window`` is the number of sequence numbers below the highest one remembered per flow for
    telling duplicates from late arrivals (a multiple of 64).
    """

    def __cinit__(self, *, bint tun=False, int max_flows=1024, int window=1024, int nslots=256,
                  int slot_size=16384):
        self.stop_fd = -1
        if not 1 <= max_flows <= 65536:
            raise ValueError(f"max_flows must be between 1 and 65536, not {max_flows}")
        if window < 64 or window % 64 or window > 1 << 20:
            raise ValueError(f"window must be a multiple of 64 between 64 and 2**20, not {window}")
        self.tun = tun
        self.max_flows = max_flows
        self.window = window
        self.ring = PacketRing(nslots, slot_size)
        self._counters_array = np.zeros(1, dtype=SINK_COUNTERS_DTYPE)
        self.counters = <sink_counters_t *><size_t>_pointer_of(self._counters_array)
        self._flows_array = np.zeros(max_flows, dtype=FLOW_DTYPE)
        self.flow_table = <sink_flow_t *><size_t>_pointer_of(self._flows_array)
        self._window_array = np.zeros((max_flows, window // 64), dtype=np.uint64)
        self.windows = <uint64_t *><size_t>_pointer_of(self._window_array)
        self._hist_array = np.zeros(HIST_BUCKETS, dtype=np.uint64)
        self.hist = <uint64_t *><size_t>_pointer_of(self._hist_array)
        self.stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.stop_fd < 0:
            raise_errno(errno, "creating the sink's stop eventfd")

    def __dealloc__(self):
        if self.stop_fd >= 0:
            close(self.stop_fd)

    def close(self):
        """Close the stop eventfd and free the receive ring; closing twice is a no-op. Refused
        (``BufferError``) while ``run()`` runs in another thread: ``stop()`` it first."""
        if self.ring._users:
            raise BufferError("cannot close the sink while run() runs: stop() it and let run() "
                              "return first")
        if self.stop_fd >= 0:
            close(self.stop_fd)
            self.stop_fd = -1
        self.ring.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def reset(self):
        """Forget every count, flow and latency."""
        self._counters_array[...] = 0
        self._flows_array[...] = 0
        self._window_array[...] = 0
        self._hist_array[...] = 0

    # -- input --------------------------------------------------------------------------------

    def consume(self, PacketRing ring not None, first, count, now_ns=None):
        """Account frames ``[first, first + count)`` of ``ring`` as received at ``now_ns``.

        ``now_ns`` is CLOCK_MONOTONIC (``monotonic()``), now by default. Indices are free-running
        and masked (``first`` is any int, kept modulo 2**32); no index of the ring moves.
        Returns ``count``. Raises ``ValueError`` before accounting anything when a length of the
        batch exceeds ``ring.slot_size``.
        """
        ring._check_open()
        if count < 0 or count > ring.nslots:
            raise ValueError(f"count must be between 0 and {ring.nslots}, not {count}")
        cdef uint64_t now = monotonic_ns() if now_ns is None else now_ns
        cdef uint32_t cfirst = ring_index(first), ccount = count
        ring_check_lengths(ring, cfirst, ccount)
        with nogil:
            sink_consume(self, ring, cfirst, ccount, now)
        return count

    def run(self, fd, *, count=None, duration=None, idle=None, vnet_hdr=None, int budget=64,
            BatchIO io=None):
        """Read from ``fd`` until ``count`` probe frames, ``duration`` seconds, ``idle`` seconds
        without a probe frame (once one arrived), or ``stop()``; returns the frames read.

        ``fd`` is an int or has ``fileno()`` (a ``TunQueue``, whose ``vnet_hdr`` is used unless
        given). The fd must be non-blocking. The GIL is released while it runs. ``io``: the backend
        (``tapengine.open_batch_io()``; a ``UringIO`` belongs to one thread), None: readv.
        """
        if self.stop_fd < 0:
            raise ValueError("the sink is closed")
        if count is not None and count < 0:  # before it becomes a uint64_t below
            raise ValueError(f"count must be >= 0, not {count}")
        cdef int cfd = fd_of(fd)
        cdef bint cvnet = _vnet_of(fd, vnet_hdr)
        cdef uint64_t limit = UINT64_MAX if count is None else count
        cdef uint64_t deadline = _deadline(duration)
        cdef uint64_t idle_ns = 0 if idle is None else <uint64_t>(idle * NS_PER_S)
        cdef uint32_t cbudget = min(max(budget, 1), self.ring.nslots)
        cdef uint64_t got
        cdef int err = 0
        if idle is not None and idle <= 0:
            raise ValueError(f"idle must be > 0 seconds, not {idle}")
        self.ring._check_open()
        use_begin(self.ring, io)
        try:
            with nogil:
                got = sink_run(self, io, cfd, cvnet, cbudget, limit, deadline, idle_ns, &err)
        finally:
            use_end(self.ring, io)
        if err:
            raise_errno(err, f"reading frames from fd {cfd}", got)
        return got

    def stop(self):
        """Make a running ``run()`` return at once (it may be blocked in poll); any thread."""
        cdef uint64_t one = 1
        self.stop_requested = 1
        if self.stop_fd >= 0:
            write(self.stop_fd, &one, 8)

    # -- results ------------------------------------------------------------------------------

    @property
    def counters(self):
        """Live read-only view of the totals (``SINK_COUNTERS_DTYPE[1]``)."""
        return _read_only(self._counters_array)

    @property
    def flows(self):
        """Live read-only view of the flow table (``FLOW_DTYPE[max_flows]``)."""
        return _read_only(self._flows_array)

    @property
    def histogram(self):
        """Live read-only view of the latency histogram (``uint64[HISTOGRAM_BUCKETS]``)."""
        return _read_only(self._hist_array)


def bucket_bounds():
    """``(low, high)`` uint64 arrays: bucket ``i`` of the histogram holds
    ``low[i] <= ns < high[i]``."""
    low = np.zeros(HIST_BUCKETS, dtype=np.uint64)
    high = np.zeros(HIST_BUCKETS, dtype=np.uint64)
    for index in range(HIST_BUCKETS):
        if index < (1 << HIST_SUB_BITS):
            low[index] = index
            high[index] = index + 1
            continue
        group = index >> HIST_SUB_BITS
        sub = index & ((1 << HIST_SUB_BITS) - 1)
        low[index] = (HISTOGRAM_SUB_BUCKETS + sub) << (group - 1)
        high[index] = min((HISTOGRAM_SUB_BUCKETS + sub + 1) << (group - 1), 2**64 - 1)
    return low, high


def histogram_index(uint64_t ns):
    """The histogram bucket holding a latency of ``ns`` nanoseconds."""
    return hist_index(ns)
