"""Nothing a C loop is using can be closed or resized under it: a ring, a sink, an io_uring, while
a generator, a sink or a forwarder runs in another thread (issue 10, item 4). Each case closes
from the main thread while the loop provably runs, then stops the loop and closes for real."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from netutil import wait_until
from tapengine import Forwarder, Generator, PacketRing, Sink, UringIO


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in (a, b):
        end.setblocking(False)
    with a, b:
        yield a, b


def in_background(work: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_a_running_sink_cannot_be_closed_nor_its_ring(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    sink = Sink()
    worker = in_background(lambda: sink.run(b, duration=120))
    Generator([64]).send(a, count=1)
    wait_until(lambda: sink.counters[0]["packets"] >= 1, 30, "the sink to read a frame")
    with pytest.raises(BufferError, match="stop"):
        sink.close()
    with pytest.raises(BufferError, match="C loop uses it"):
        sink.ring.close()
    with pytest.raises(BufferError, match="C loop uses it"):
        sink.ring.resize(64)
    sink.stop()
    worker.join(30)
    assert not worker.is_alive()
    sink.close()
    assert sink.ring.closed


def test_a_running_generator_keeps_its_ring(pair: tuple[socket.socket, ...]) -> None:
    a, _ = pair
    gen = Generator([64], rate=2000)
    worker = in_background(lambda: gen.send(a, duration=120))
    try:
        wait_until(lambda: gen.counters[0]["packets"] >= 2, 30, "the generator to send")
        with pytest.raises(BufferError, match="cannot close the packet ring"):
            gen.ring.close()  # the generator holds a view of its templates, and runs from it
        with pytest.raises(BufferError, match="cannot resize the packet ring"):
            gen.ring.resize(64)
    finally:
        gen.stop()
        worker.join(30)
    assert not worker.is_alive()
    assert gen.counters[0]["packets"] >= 2


def test_an_io_uring_in_use_by_a_sink_cannot_be_closed(
    pair: tuple[socket.socket, ...], needs_io_uring: None
) -> None:
    a, b = pair
    sink = Sink()
    ring_io = UringIO(64)
    worker = in_background(lambda: sink.run(b, duration=120, io=ring_io))
    Generator([64]).send(a, count=1)
    wait_until(lambda: sink.counters[0]["packets"] >= 1, 30, "the sink to read a frame")
    with pytest.raises(BufferError, match="cannot close the io_uring"):
        ring_io.close()
    assert not ring_io.closed
    sink.stop()
    worker.join(30)
    ring_io.close()
    sink.close()


def test_an_io_uring_in_use_by_a_forwarder_cannot_be_closed(needs_io_uring: None) -> None:
    ends = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for outside, inside in ends:
        outside.setblocking(False)
        inside.setblocking(False)
    ring_io = UringIO(64)
    forwarder = Forwarder("wire", io=ring_io)
    for _, inside in ends:
        forwarder.add_port(inside, PacketRing(64, 2048))
    worker = in_background(forwarder.run)
    try:
        ends[0][0].send(b"x" * 60)  # through the wire: proof that the loop runs
        wait_until(lambda: _readable(ends[1][0]), 30, "a frame through the forwarder")
        with pytest.raises(BufferError, match="cannot close the io_uring"):
            ring_io.close()
    finally:
        forwarder.stop()
        worker.join(30)
    forwarder.close()  # closes its io_uring too, now that nothing uses it
    assert ring_io.closed
    for outside, inside in ends:
        outside.close()
        inside.close()


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(65536))
    except BlockingIOError:
        return False
