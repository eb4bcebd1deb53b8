# tapengine._stage: stages, the forwarder's programmable step between receive and send.
#
# C-level API for other Cython code. A stage sees each batch a forwarder received, before the
# egress of its packets is chosen: the ingress port index, the ring slots [first, first + n) and
# a verdict per packet, which starts as VERDICT_DEFAULT. It may set a verdict (an egress port
# index >= 0, VERDICT_DROP, VERDICT_FLOOD) and rewrite frames, lengths (and, with ring v2,
# offsets and peers) within the ring's safety boundary (tapengine._ring). The forwarder checks
# what a stage wrote after each call: a length outside the slot or a verdict that names no port
# is counted against the stage and the packet dropped, never sent anywhere else.
#
# An external Cython module subclasses Stage and overrides process(); it runs in the worker with
# the GIL released. Stage itself (and any Python subclass or callable, see tapengine.Stage)
# takes the GIL once per batch and calls the Python object with a Batch of numpy views.

from libc.stdint cimport int32_t, uint32_t

from tapengine._ring cimport PacketRing


cdef enum:
    VERDICT_DEFAULT = -1    # the built-in wire/switch decides (tapengine.DEFAULT)
    VERDICT_DROP = -2       # dropped, counted as filtered under the stage's name (tapengine.DROP)
    VERDICT_FLOOD = -3      # out of every other port that is up (tapengine.FLOOD)
    # >= 0: the index of the egress port

# Columns of a stage's counter row (STAGE_COUNTER_NAMES in Python), kept by each forwarder.
cdef enum:                  # StageCounter
    STAGE_BATCHES           # batches it was called with
    STAGE_SEEN              # packets in them
    STAGE_DROPPED           # verdicts it set to DROP
    STAGE_REDIRECTED        # verdicts it set to a port or FLOOD
    STAGE_MISDIRECTED       # verdicts it set to a port that does not exist (or an unknown value)
    STAGE_INVALID           # lengths it left outside the slot: the packet is dropped
    STAGE_NS                # time spent in process(), nanoseconds
    N_STAGE_COUNTERS


cdef class Stage:
    cdef readonly str name
    # Why a stage stopped the engine: a Python exception (``failure``), or what a C stage gave
    # to fail(): an errno and a static message.
    cdef object failure
    cdef int fail_errno
    cdef const char *fail_why
    cdef dict _ports        # PacketRing -> _PortViews, for the Python path (GIL held)

    # One call per received batch, GIL released: ingress port index, slots [first, first + n)
    # of ring (a batch never wraps the ring), verdict[0 .. n). Returns 0, or -1 to stop the
    # engine (after recording why: fail() from C, an exception from Python).
    cdef int process(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                     int32_t *verdict) noexcept nogil
    # _call: the Python path of process(): returns 0, or -1 with the exception in ``failure``.
    cdef int _call(self, PacketRing ring, uint32_t first, uint32_t n) noexcept
    # fail: records ``err`` (an errno, or 0) and ``why`` (a static string); returns -1, the value
    # process() returns to stop the engine.
    cdef int fail(self, int err, const char *why) noexcept nogil
    # bind/unbind: the forwarder tells the stage which ring serves which port before it runs
    # (views for Python stages are made on first use) and forgets it when it closes. GIL held.
    cdef int bind(self, PacketRing ring, int port, str port_name, bint l2, bint vnet_hdr,
                  object verdict) except -1
    cdef void unbind(self, PacketRing ring) noexcept
    # error: the exception to raise for a stage that returned -1 (GIL held).
    cdef object error(self)
