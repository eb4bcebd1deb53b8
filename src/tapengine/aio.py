"""asyncio over packet queues: tun/tap queues, and any fd ``recv_batch``/``send_batch`` accept.

``AsyncQueue(queue)`` wraps a non-blocking fd (a ``TunQueue``, a socket, an int) for the running
event loop, built on ``loop.add_reader``/``add_writer`` (no thread, no polling)::

    async with AsyncQueue(open_queue("tun0", "tun")) as queue:
        async for batch in queue:                      # each batch: ring slots [first, first+count)
            ...
            await queue.send_batch(batch.ring, batch.first, batch.count)

- ``await queue.recv_batch(ring, budget)`` waits until the fd is readable, then reads up to
  ``budget`` packets into ``ring`` with one ``tapengine.recv_batch`` (at least one).
- ``async for batch in queue`` (or ``queue.batches(ring)``) yields ``Batch``es; a batch is
  consumed from the ring when the loop asks for the next one, and every batch starts at slot 0,
  so ``ring.frames[batch.first:batch.first + batch.count]`` never wraps.
- ``await queue.send_batch(ring, first, count)`` writes every packet, waiting for the fd to be
  writable whenever the kernel would block, instead of dropping (``tapengine.send_batch`` returns
  short then).
- ``close()`` wakes every task waiting in a ``recv_batch``/``send_batch``/``async for`` of the
  queue with ``QueueClosedError`` (a blocking ``read()`` in another thread would never return:
  python-pytun's most asked-about gap), unregisters the fd from the loop, then closes the queue.

Several tasks may wait on one queue; each readiness wakes all of them and each tries its own
read (the fd is level-triggered: whoever finds nothing waits again). A queue belongs to one event
loop, the one running when it is first awaited; ``close()`` from another thread is handed to that
loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from tapengine import _batchio
from tapengine._ring import MAX_SLOT_SIZE, PacketRing
from tapengine.errors import QueueClosedError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from tapengine._batchio import BatchIO

#: Slots of the ring an ``AsyncQueue`` makes for itself (``async for`` without a ring).
DEFAULT_SLOTS = 64
#: Their size without a virtio-net header: a 9000-byte jumbo frame fits; with one, 64 KiB.
DEFAULT_SLOT_SIZE = 16384


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


@dataclass(frozen=True)
class Batch:
    """Packets read in one go: slots ``first .. first+count-1`` (free-running) of ``ring``."""

    ring: PacketRing
    first: int
    count: int

    @property
    def slots(self) -> slice:
        """The batch's rows of ``ring.frames``, ``ring.lengths``, ...: ``ring.frames[batch.slots]``
        is every packet's slot at once (zero-copy). For batches that do not wrap the ring, as
        ``async for`` hands out."""
        start = self.first & self.ring.mask
        if start + self.count > self.ring.nslots:
            raise ValueError("this batch wraps around the ring: use indices() instead")
        return slice(start, start + self.count)

    def indices(self) -> list[int]:
        """The slot of each packet, masked: ``ring.frames[k]`` for ``k`` in them."""
        mask = self.ring.mask
        return [(self.first + k) & mask for k in range(self.count)]

    def frames(self) -> list[npt.NDArray[np.uint8]]:
        """Each packet as a writable numpy view of its slot, exactly its length long (from
        the slot's offset: where a receive put it, or a stage moved it)."""
        slots, offsets, lengths = self.ring.slots, self.ring.offsets, self.ring.lengths
        return [slots[k, int(offsets[k]):int(offsets[k]) + int(lengths[k])]
                for k in self.indices()]

    def packets(self) -> list[bytes]:
        """Each packet, copied."""
        return [self.ring.packet(self.first + k) for k in range(self.count)]


class AsyncQueue:
    """A non-blocking packet fd for asyncio (see the module's doc).

    ``queue``: a ``TunQueue``, a socket, anything with ``fileno()`` (a
    ``tapengine.compat.pytun.TunTapDevice`` too), or an int fd; the fd is made non-blocking.
    ``vnet_hdr``: whether each packet carries a virtio-net header; by default what a
    ``TunQueue`` says, else False. ``ring``: the ring ``async for`` reads into (default: one of
    its own). ``io``: a batch I/O backend (``tapengine.open_batch_io()``), None: readv.
    ``close()`` closes ``queue`` too when it has a ``close()`` (an int fd is left open: it is
    the caller's); ``close_queue=False`` leaves it open in any case.
    """

    def __init__(self, queue: int | _HasFileno, *, vnet_hdr: bool | None = None,
                 ring: PacketRing | None = None, budget: int = 64, io: BatchIO | None = None,
                 close_queue: bool = True) -> None:  # fmt: skip
        fd = queue if isinstance(queue, int) else queue.fileno()
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"not an open file descriptor: {queue!r}")
        if budget < 1:
            raise ValueError(f"budget must be at least 1, not {budget}")
        os.set_blocking(fd, False)
        self._queue = queue
        self._fd = fd
        self.vnet_hdr = bool(getattr(queue, "vnet_hdr", False) if vnet_hdr is None else vnet_hdr)
        self.budget = budget
        self.io = io
        self._ring = ring
        self._own_ring = False
        self._close_queue = close_queue and not isinstance(queue, int)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: list[asyncio.Future[None]] = []
        self._writers: list[asyncio.Future[None]] = []
        self._closed = False

    # -- state --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    @property
    def ring(self) -> PacketRing:
        """The ring ``async for`` reads into (made on first use if none was given)."""
        if self._ring is None:
            slot_size = MAX_SLOT_SIZE if self.vnet_hdr else DEFAULT_SLOT_SIZE
            self._ring = PacketRing(DEFAULT_SLOTS, slot_size)
            self._own_ring = True
        return self._ring

    @property
    def waiting(self) -> tuple[int, int]:
        """Tasks waiting now for the fd to be readable and to be writable."""
        return len(self._readers), len(self._writers)

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosedError(errno.EBADF, f"{self._describe()} is closed")

    def _describe(self) -> str:
        name = getattr(self._queue, "name", None)
        return f"queue {name}" if isinstance(name, str) else f"fd {self._fd}"

    def _loop_of_caller(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(f"{self._describe()} is used by another event loop")
        return loop

    # -- waiting ------------------------------------------------------------------------------

    async def _wait(self, writable: bool) -> None:
        """Until the fd is readable (or writable); QueueClosedError if closed meanwhile."""
        loop = self._loop_of_caller()
        waiters = self._writers if writable else self._readers
        future: asyncio.Future[None] = loop.create_future()
        if not waiters:
            add = loop.add_writer if writable else loop.add_reader
            add(self._fd, self._wake, writable)
        waiters.append(future)
        try:
            await future
        finally:
            if future in waiters:       # cancelled: the others keep waiting
                waiters.remove(future)
                if not waiters and not self._closed:
                    (loop.remove_writer if writable else loop.remove_reader)(self._fd)

    def _wake(self, writable: bool) -> None:
        # The fd is ready: wake every waiter; each tries again, and waits again if it finds
        # nothing (level-triggered), so the fd is watched only while someone waits.
        waiters = self._writers if writable else self._readers
        assert self._loop is not None
        (self._loop.remove_writer if writable else self._loop.remove_reader)(self._fd)
        for future in waiters:
            if not future.done():
                future.set_result(None)
        waiters.clear()

    # -- reading and writing ------------------------------------------------------------------

    async def recv_batch(self, ring: PacketRing, budget: int | None = None) -> int:
        """Read up to ``budget`` (default: the queue's) packets into ``ring``'s free slots,
        waiting until at least one is there; returns how many (``ring.tail`` advanced by it).
        Raises ``QueueClosedError`` if the queue is closed before or while waiting, and
        ``BufferError`` when the ring has no free slot (it would wait forever)."""
        budget = self.budget if budget is None else budget
        if budget < 1:
            raise ValueError(f"budget must be at least 1, not {budget}")
        while True:
            self._check_open()
            if ring.free == 0:
                raise BufferError(f"the ring has no free slot to read into: consume() first "
                                  f"({ring.pending} pending)")
            n = _batchio.recv_batch(self._fd, ring, budget, vnet_hdr=self.vnet_hdr, io=self.io)
            if n:
                return n
            await self._wait(writable=False)

    async def send_batch(self, ring: PacketRing, first: int, count: int) -> int:
        """Write the ``count`` packets of slots ``first`` onwards, waiting for the fd to be
        writable whenever the kernel would block (nothing is dropped); returns ``count``.
        ``ring.head`` is not moved. Raises ``QueueClosedError`` if the queue is closed before
        or while waiting. A task cancelled while waiting raises ``CancelledError`` with ``sent``
        set to the packets written before it (slots ``first .. first+sent-1``)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        sent = 0
        while sent < count:
            self._check_open()
            sent += _batchio.send_batch(self._fd, ring, first + sent, count - sent,
                                        vnet_hdr=self.vnet_hdr, io=self.io)  # fmt: skip
            if sent < count:
                try:
                    await self._wait(writable=True)
                except asyncio.CancelledError as cancelled:
                    cancelled.sent = sent  # type: ignore[attr-defined]
                    raise
        return count

    async def send(self, packet: bytes | bytearray | memoryview) -> None:
        """Write one packet (copied into a small ring of the queue's own), waiting as
        ``send_batch`` does."""
        with PacketRing(1, max(len(packet), 64)) as ring:
            ring.push(packet)
            await self.send_batch(ring, ring.head, 1)

    def batches(self, ring: PacketRing | None = None,
                budget: int | None = None) -> AsyncIterator[Batch]:  # fmt: skip
        """``async for batch in queue.batches(ring)``: batch after batch, until ``close()``
        (which raises ``QueueClosedError`` in the loop, as in any waiting task). Each batch is
        consumed when the next is asked for, and starts at slot 0 when nothing else is pending
        in the ring."""
        return _Batches(self, self.ring if ring is None else ring, budget)

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self.batches()

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Wake every waiting task with ``QueueClosedError``, stop watching the fd, close the
        queue (see the class doc) and the ring it made; a second call does nothing. From a
        thread other than the loop's, the close is handed to the loop and happens there."""
        if self._closed:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed() and _running_loop() is not loop \
                and loop.is_running():
            loop.call_soon_threadsafe(self.close)
            return
        self._closed = True
        for writable, waiters in ((False, self._readers), (True, self._writers)):
            if waiters and loop is not None and not loop.is_closed():
                (loop.remove_writer if writable else loop.remove_reader)(self._fd)
            for future in waiters:
                if not future.done():
                    future.set_exception(QueueClosedError(
                        errno.EBADF, f"{self._describe()} was closed while a task waited to "
                        f"{'write' if writable else 'read'}"))
            waiters.clear()
        if self._close_queue:
            self._queue.close()  # type: ignore[union-attr]
        if self._own_ring and self._ring is not None and not self._ring.exports:
            self._ring.close()

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncQueue {self._describe()} {state}>"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Batches:
    """The async iterator of ``AsyncQueue.batches``."""

    def __init__(self, queue: AsyncQueue, ring: PacketRing, budget: int | None) -> None:
        self._queue = queue
        self._ring = ring
        self._budget = budget
        self._last = 0          # packets of the batch handed out last, consumed on the next

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> Batch:
        ring = self._ring
        if self._last:
            ring.consume(min(self._last, ring.pending))
            self._last = 0
        if ring.pending == 0:
            ring.clear()        # the next batch starts at slot 0: it never wraps
        first = ring.tail
        n = await self._queue.recv_batch(ring, self._budget)
        self._last = n
        return Batch(ring, first, n)


__all__ = ["DEFAULT_SLOTS", "DEFAULT_SLOT_SIZE", "AsyncQueue", "Batch", "QueueClosedError"]
