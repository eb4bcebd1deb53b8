# tapengine._pcapng: pcapng capture from ring slots, and pcap/pcapng reading for replay.
#
# Capture. capture_batch() turns a batch of ring slots into Enhanced Packet Blocks (one per frame,
# or one per segment of a GSO superframe) in a bounded byte ring, without the GIL and without a
# Python call or an allocation per packet. A drain thread (PcapngWriter's own) writes whole
# blocks from that ring to the file. When the ring has no room for a block the frame is dropped
# and counted (``dropped`` of its interface): the capturing thread never waits for the disk.
# Any number of threads may call capture_batch() (one lock per batch); one thread drains.
#
# Byte ring: ``head`` (bytes appended) and ``tail`` (bytes written to the file) run freely; a
# block never wraps: a block that does not fit before the end of the buffer is preceded by a
# wrap marker (a uint32 0, a block type pcapng reserves) and starts again at offset 0.
#
# Replay. PcapReader walks a pcap or pcapng file mapped in memory; reader_next() hands out one
# packet at a time. Replayer copies packets into a ring's slots and writes them to a tun/tap,
# paced by the generator's token bucket (tapengine._pktgen), by the file's own timestamps, or
# not at all.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from tapengine._batchio cimport BatchIO
from tapengine._pktgen cimport token_bucket_t
from tapengine._ring cimport PacketRing
from tapengine._stage cimport Stage
from tapengine.includes.system cimport pthread_mutex_t


cdef enum:
    MAX_INTERFACES = 256        # interfaces of one capture, and of one section of a read file
    EPB_INBOUND = 1             # epb_flags: direction bits (pcapng, Enhanced Packet Block)
    EPB_OUTBOUND = 2
    SEGMENT_SLOTS = 64          # segments of one superframe written apart (more: written whole)
    SEGMENT_SLOT_SIZE = 9216 + 128


# Per capture interface; all uint64 (numpy dtype CAPTURE_COUNTERS_DTYPE).
cdef struct capture_counters_t:
    uint64_t packets            # blocks written into the buffer (frames, or segments)
    uint64_t bytes              # captured bytes in them (after snaplen)
    uint64_t dropped            # frames that did not fit the buffer (or came after a failure)
    uint64_t superframes        # GSO superframes received
    # superframes written whole although segmenting was asked (a header gso refuses, more
    # than SEGMENT_SLOTS segments, a segment longer than SEGMENT_SLOT_SIZE)
    uint64_t whole


cdef class PcapngWriter:
    cdef uint8_t *buf
    cdef readonly uint64_t buffer_size  # a power of two
    cdef uint64_t head                  # bytes appended: producers, under ``lock``
    cdef uint64_t tail                  # bytes written to the file: the drain thread
    cdef readonly uint32_t snaplen
    cdef readonly uint32_t ninterfaces
    cdef readonly bint segment          # superframes as a wire carries them (else whole)
    cdef uint8_t vnet[MAX_INTERFACES]   # frames of this interface carry a virtio-net header
    cdef uint8_t l2[MAX_INTERFACES]     # Ethernet (tap) or IP (tun)
    cdef object _counters_array
    cdef capture_counters_t *counters
    cdef PacketRing scratch             # segments of one superframe
    cdef pthread_mutex_t lock
    cdef bint lock_ready
    cdef int wake_fd                    # eventfd: wakes the sleeping drain thread
    cdef int sleeping                   # atomic: the drain thread waits on wake_fd
    cdef int stopping                   # atomic: drain what is left, then stop
    cdef int failed                     # atomic: errno of a failed write; all else is dropped
    cdef int stop_fd                    # eventfd: stops capture_run()
    cdef volatile int stop_requested
    cdef uint64_t file_bytes            # bytes in the current file
    cdef uint64_t file_blocks           # packet blocks in the current file
    cdef uint64_t rotate_bytes          # 0: one file
    cdef int fd                         # the current file
    cdef Py_ssize_t _users              # capture_run() and stages using it: no close()
    cdef readonly str path
    cdef readonly object comment
    cdef readonly list interfaces       # (name, linktype) per interface
    cdef readonly list files            # the files written so far (rotation adds)
    cdef readonly object error          # the drain thread's OSError, if a write failed
    cdef readonly uint64_t started_ns
    cdef object _thread
    cdef object __weakref__

    cdef int _check_interface(self, int interface) except -1


# Appends a block per frame of slots [first, first + n) of ``ring`` for interface ``ifidx``
# (< ninterfaces, checked by the caller), stamped ``ts_ns`` (CLOCK_REALTIME) with epb_flags
# ``flags``; a frame without room is counted as dropped. Returns frames captured (not dropped).
cdef uint32_t capture_batch(PcapngWriter w, uint32_t ifidx, PacketRing ring, uint32_t first,
                            uint32_t n, uint32_t flags, uint64_t ts_ns) noexcept nogil

# CLOCK_REALTIME in nanoseconds: the clock of capture timestamps.
cdef uint64_t realtime_ns() noexcept nogil


# A forwarding stage (tapengine._stage) capturing each received batch, inbound, as the
# interface of its port index; verdicts untouched.
cdef class CaptureStage(Stage):
    cdef readonly PcapngWriter writer
    cdef bint released                  # close() gave back its use of the writer
    cdef readonly uint32_t directions   # EPB_INBOUND | EPB_OUTBOUND: what it records

    # capture_tx: frames [first, first + n) of ring, just sent out of ``port`` (the forwarder's
    # egress hook, Forwarder.set_capture): recorded outbound on that port's interface.
    cdef void capture_tx(self, int port, PacketRing ring, uint32_t first,
                         uint32_t n) noexcept nogil
    cdef void _record(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                      uint32_t direction) noexcept nogil


# One packet of a read file; ``data`` points into the mapped file.
cdef struct pcap_packet_t:
    const uint8_t *data
    uint32_t caplen
    uint32_t origlen
    uint32_t ifidx              # interface within its section (0 for pcap)
    uint32_t linktype
    uint64_t ts_ns              # 0 when the block has none (Simple Packet Block)


cdef class PcapReader:
    cdef object _view                   # the buffer ``data`` points into (a memoryview of mmap)
    cdef object _map
    cdef const uint8_t *data
    cdef readonly uint64_t size
    cdef uint64_t pos
    cdef uint64_t start                 # first record (pcap) or first block (pcapng)
    cdef readonly bint pcapng
    cdef bint swapped                   # the file's byte order is not ours
    cdef uint32_t pcap_linktype
    cdef uint32_t pcap_snaplen
    cdef uint64_t pcap_tsmul            # 1000 (µs files) or 1 (ns files)
    cdef uint32_t nif                   # interfaces of the current pcapng section
    cdef uint16_t if_linktype[MAX_INTERFACES]
    cdef uint32_t if_snaplen[MAX_INTERFACES]
    cdef uint8_t if_tsresol[MAX_INTERFACES]
    cdef readonly int error             # the ReadError of the last reader_next() (0: none)
    cdef readonly uint64_t error_offset
    cdef readonly str path

    cdef int _parse_header(self) except -1
    cdef int _raise(self) except -1


# Returns 1 and fills *pkt, 0 at the end of the file, or -1 with r.error and r.error_offset set
# (the reader then stays at the bad record).
cdef int reader_next(PcapReader r, pcap_packet_t *pkt) noexcept nogil


cdef struct replay_counters_t:
    uint64_t packets            # written
    uint64_t bytes
    uint64_t failed             # refused by the device (EINVAL, EMSGSIZE ...), skipped
    uint64_t too_long           # longer than a slot: skipped
    uint64_t loops              # passes over the file completed
    uint64_t first_ns           # CLOCK_MONOTONIC of the first write, 0 before
    uint64_t last_ns
    uint64_t snapped            # written with fewer bytes than they had (caplen < origlen)


cdef class Replayer:
    cdef readonly PcapReader reader
    cdef readonly PacketRing ring
    cdef object _counters_array
    cdef replay_counters_t *counters
    cdef token_bucket_t bucket
    cdef readonly double speed          # > 0: the file's timing divided by speed; 0: unpaced
    cdef readonly uint64_t loops        # passes over the file, 0 = forever
    cdef readonly uint32_t batch
    cdef readonly bint l2               # the device takes Ethernet (tap) or IP (tun)
    cdef uint64_t *due                  # per slot: CLOCK_MONOTONIC time the packet is due
    cdef object _due_array
    cdef uint8_t *snapped               # per slot: the packet is a snapped stub of a longer one
    cdef object _snapped_array
    cdef uint64_t file_t0               # timestamp of the first packet of this pass
    cdef uint64_t mono_t0               # when that packet was (or is) due
    cdef bint anchored
    cdef uint64_t pass_packets          # packets of this pass put into the ring
    cdef volatile int stop_requested
    cdef readonly dict summary          # what PcapReader.scan() found
