# cython: language_level=3, embedsignature=True, auto_pickle=False
"""Stages: the user's own logic between a forwarder's receive and its choice of egress.

A forwarder runs its stages on every batch it receives, in order, then the built-in wire or
learning switch (tapengine._forward) as the last, default stage: one mechanism for both. Each stage
fills a verdict per packet: an egress port index, ``DROP`` (counted under the stage's name) or
``FLOOD``; a packet whose verdict stays ``DEFAULT`` goes where the wire or the switch sends it.

- In C: a ``cdef class`` subclassing ``Stage`` (``from tapengine._stage cimport Stage``) that
  overrides ``process()``; it runs with the GIL released.
- In Python: a ``Stage`` subclass with ``__call__(self, batch)``, or any callable (wrapped in a
  ``FunctionStage``). It is called once per batch with the GIL taken once, given a ``Batch`` of
  numpy views (frames, lengths, headers, the verdict array) of exactly that batch, so that
  per-packet logic is vectorised: ``batch.verdict[dport == 53] = DROP``. The views are slices of
  views made once per port, so a call costs a few microseconds, not a few per packet.

An exception from a Python stage (or -1 from a C stage's ``process()``) stops the worker and the
engine with a ``StageError`` whose cause is the stage's exception, traceback included.
"""

cimport cython
from libc.stdint cimport int32_t, uint32_t

from tapengine._ring cimport PacketRing

import inspect
import os

from tapengine.errors import StageError

#: Verdicts (also in tapengine: ``tapengine.DEFAULT``, ``DROP``, ``FLOOD``); >= 0 is a port.
DEFAULT = VERDICT_DEFAULT
DROP = VERDICT_DROP
FLOOD = VERDICT_FLOOD

#: Columns of a forwarder's per-stage counters (``Forwarder.stage_counters``).
STAGE_COUNTER_NAMES = (
    "batches", "seen", "dropped", "redirected", "misdirected", "invalid", "ns",
)
assert len(STAGE_COUNTER_NAMES) == N_STAGE_COUNTERS


@cython.final
cdef class _PortViews:
    """One port's ring as a Python stage sees it: numpy views made once, on first use."""

    cdef readonly PacketRing ring
    cdef readonly int port
    cdef readonly str name
    cdef readonly bint l2
    cdef readonly bint vnet_hdr
    cdef readonly object verdict        # the forwarder's int32[MAX_BUDGET]
    cdef object _frames, _lengths, _headers, _offsets, _peers

    cdef object frames(self):
        if self._frames is None:
            self._frames = self.ring.frames
        return self._frames

    cdef object lengths(self):
        if self._lengths is None:
            self._lengths = self.ring.lengths
        return self._lengths

    cdef object headers(self):
        if self._headers is None:
            self._headers = self.ring.headers
        return self._headers

    cdef object offsets(self):
        if self._offsets is None:
            self._offsets = getattr(self.ring, "offsets", None)
        return self._offsets

    cdef object peers(self):
        if self._peers is None:
            self._peers = getattr(self.ring, "peers", None)
        return self._peers


@cython.final
cdef class Batch:
    """One received batch as a Python stage sees it: numpy views of exactly its packets.

    ``frames`` (uint8[n, slot_size]), ``lengths`` (uint32[n]), ``headers`` (the virtio-net
    headers), ``offsets`` and ``peers`` (with ring v2) and ``verdict`` (int32[n], every entry
    ``DEFAULT`` on entry) share the ring's memory: writing them rewrites the packets and sets
    their fate. ``port``/``port_name`` say where the batch came in, ``l2`` whether frames are
    Ethernet (tap) or IP packets (tun), ``vnet_hdr`` whether the headers are the port's own.
    ``ring``, ``first`` and ``n`` name the slots, for ``send_batch`` and the like. A batch is
    valid only during the call: keep no view of it.
    """

    cdef _PortViews _views
    cdef readonly uint32_t first
    cdef readonly uint32_t n

    @property
    def port(self):
        return self._views.port

    @property
    def port_name(self):
        return self._views.name

    @property
    def ring(self):
        return self._views.ring

    @property
    def l2(self):
        return self._views.l2

    @property
    def vnet_hdr(self):
        return self._views.vnet_hdr

    @property
    def frames(self):
        return self._views.frames()[self.first:self.first + self.n]

    @property
    def lengths(self):
        return self._views.lengths()[self.first:self.first + self.n]

    @property
    def headers(self):
        return self._views.headers()[self.first:self.first + self.n]

    @property
    def offsets(self):
        views = self._views.offsets()
        if views is None:
            raise AttributeError("this ring has no per-slot offsets")
        return views[self.first:self.first + self.n]

    @property
    def peers(self):
        views = self._views.peers()
        if views is None:
            raise AttributeError("this ring has no per-slot peers")
        return views[self.first:self.first + self.n]

    @property
    def verdict(self):
        return self._views.verdict[:self.n]

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"<Batch of {self.n} from port {self._views.port} ({self._views.name})>"


cdef class Stage:
    """A stage: called once per received batch, before the egress of its packets is chosen.

    Subclass it in Python and define ``__call__(self, batch)`` (see ``Batch``), or in Cython and
    override the ``nogil`` ``process()`` (``from tapengine._stage cimport Stage``). ``name``
    (default: the class name) labels its counters. ``attach(port_names)`` is called once before
    the engine starts, with the names of the ports in index order: a stage can look up the
    index of a port it redirects to there; ``detach()`` once when the engine closes.
    """

    def __cinit__(self, *args, **kwargs):
        self.name = type(self).__name__
        self._ports = {}

    def __init__(self, name=None):
        if name is not None:
            if not isinstance(name, str) or not name or not name.isprintable():
                raise ValueError(f"a stage name must be printable, non-empty text, not {name!r}")
            self.name = name

    def attach(self, port_names):
        """Called once before the engine starts, with the port names in index order."""

    def detach(self):
        """Called once when the engine closes, after every worker stopped: release what
        ``attach`` or the calls opened."""

    def __call__(self, batch):
        raise NotImplementedError(
            f"{type(self).__name__} defines neither __call__(batch) nor a C process()")

    @property
    def failure(self):
        """The exception that stopped the engine (a Python stage), or None."""
        return self.failure

    cdef int process(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                     int32_t *verdict) noexcept nogil:
        # The Python path: the GIL once per batch. Returns 0, or -1 after an exception.
        with gil:
            return self._call(ring, first, n)

    cdef int _call(self, PacketRing ring, uint32_t first, uint32_t n) noexcept:
        # Returns 0, or -1 with the exception kept in ``failure``.
        cdef Batch batch = Batch.__new__(Batch)
        try:
            batch._views = <_PortViews>self._ports[ring]
            batch.first = first
            batch.n = n
            self(batch)
        except BaseException as exc:
            if self.failure is None:
                self.failure = exc
            return -1
        return 0

    cdef int fail(self, int err, const char *why) noexcept nogil:
        if self.fail_why == NULL:
            self.fail_errno = err
            self.fail_why = why
        return -1

    cdef int bind(self, PacketRing ring, int port, str port_name, bint l2, bint vnet_hdr,
                  object verdict) except -1:
        cdef _PortViews views = _PortViews.__new__(_PortViews)
        views.ring = ring
        views.port = port
        views.name = port_name
        views.l2 = l2
        views.vnet_hdr = vnet_hdr
        views.verdict = verdict
        self._ports[ring] = views
        return 0

    cdef void unbind(self, PacketRing ring) noexcept:
        if self._ports is not None:
            self._ports.pop(ring, None)

    cdef object error(self):
        if self.failure is not None:
            exc = self.failure
            err = StageError(f"stage {self.name!r} raised {type(exc).__name__}: {exc}")
            err.__cause__ = exc
        else:
            why = self.fail_why.decode("utf-8", "replace") if self.fail_why != NULL \
                else "process() returned -1"
            if self.fail_errno:
                why = f"{why} ({os.strerror(self.fail_errno)})"
            err = StageError(f"stage {self.name!r} stopped the engine: {why}")
        err.stage = self.name
        return err

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


cdef class FunctionStage(Stage):
    """A plain callable as a stage: ``fn(batch)`` once per batch; named after the function."""

    cdef readonly object function

    def __init__(self, function, name=None):
        if not callable(function):
            raise TypeError(f"a stage must be callable, not {type(function).__name__}")
        check_synchronous(function)
        self.function = function
        if name is None:
            name = getattr(function, "__name__", None) or type(function).__name__
        super().__init__(name)

    def attach(self, port_names):
        attach = getattr(self.function, "attach", None)
        if callable(attach):
            attach(port_names)

    def detach(self):
        detach = getattr(self.function, "detach", None)
        if callable(detach):
            detach()

    def __call__(self, batch):
        self.function(batch)


@cython.final
cdef class NullStage(Stage):
    """A C stage that does nothing: what the stage mechanism itself costs (bench/stage_cost.py)."""

    cdef int process(self, int port, PacketRing ring, uint32_t first, uint32_t n,
                     int32_t *verdict) noexcept nogil:
        return 0


_NOT_RUN = (
    (inspect.iscoroutinefunction, "a coroutine function (async def)"),
    (inspect.isasyncgenfunction, "an async generator function"),
    (inspect.isgeneratorfunction, "a generator function (it yields)"),
)


def check_synchronous(obj):
    """TypeError if calling ``obj`` (or its ``__call__``) would not run its body.

    A stage is called synchronously once per batch and what it returns is ignored: the
    coroutine or generator that such a function returns would never run, so every batch would
    pass untouched (a coroutine's "never awaited" warning aside). Refused where the stage is
    made, instead.
    """
    for target in (obj, getattr(obj, "__call__", None)):
        for test, kind in _NOT_RUN:
            if target is not None and test(target):
                name = getattr(obj, "__qualname__", None) or type(obj).__name__
                raise TypeError(f"{name} is {kind}: a stage is called synchronously, once per "
                                "batch, and its result is ignored, so its body would never run "
                                "(make it a plain def)")


def as_stage(obj, name=None):
    """``obj`` if it is a ``Stage``, else a ``FunctionStage`` calling it; TypeError otherwise."""
    if isinstance(obj, Stage):
        check_synchronous(obj)
        if name is not None:
            (<Stage>obj).name = name
        return obj
    return FunctionStage(obj, name)
