"""``tapengine.aio``: the README's asyncio echo answers the kernel's UDP socket through a tun in a
namespace (digests of the payloads); ``close()`` wakes every waiting task with QueueClosedError;
``send_batch`` waits while the kernel's queue is full (filled on purpose) and completes once it
drains, nothing lost or reordered."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from fwdnet import in_netns, quiet_ipv6
from netutil import wait_until
from tapengine import PacketRing, open_queue
from tapengine.aio import AsyncQueue
from tapengine.errors import QueueClosedError
from tapengine.netns import run_in_netns
from test_readme import python_block


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Let the loop run until ``condition()`` holds (other tasks reach their await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.001)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def dgram_pair(sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected AF_UNIX datagram pair: one datagram per packet, as a tun queue carries, and
    a receive queue that fills when nobody reads (its length limit, not timing)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return a, b


# -- the README's echo, on a tun in a namespace ------------------------------------------------


def test_the_readme_echo_answers_the_kernels_udp_socket(make_netns: Callable[[str], str]) -> None:
    from pyroute2 import IPRoute

    netns = make_netns("aio")
    quiet_ipv6(netns)                   # only our datagrams cross the tun
    code = python_block("### asyncio")
    outcome: dict[str, BaseException] = {}

    def serve() -> None:
        try:
            run_in_netns(netns, exec, code, {})    # creates tun0 there, gone with its fd
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    server = threading.Thread(target=serve)
    server.start()
    try:
        def tun_up() -> bool:
            with IPRoute(netns=netns) as ipr:
                found = ipr.link_lookup(ifname="tun0")
                if found:
                    ipr.addr("add", index=found[0], address="10.77.0.1", prefixlen=24)
                    ipr.link("set", index=found[0], state="up")
                return bool(found)

        wait_until(lambda: tun_up() or "error" in outcome, 30, "the echo to open tun0")
        sock = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(30)
            sock.bind(("10.77.0.1", 0))
            payloads = [os.urandom(16 + 97 * k) for k in range(8)]
            for payload in payloads:
                sock.sendto(payload, ("10.77.0.2", 7))
            replies = [sock.recvfrom(4096) for _ in payloads]
    finally:
        server.join(60)
    assert "error" not in outcome, outcome
    assert not server.is_alive()
    assert all(source == ("10.77.0.2", 7) for _, source in replies)

    def digest(items: list[bytes]) -> str:
        return hashlib.sha256(b"".join(items)).hexdigest()

    assert digest([data for data, _ in replies]) == digest(payloads)


# -- close() wakes every waiter ----------------------------------------------------------------


def test_close_wakes_every_waiting_task_on_a_tap(make_netns: Callable[[str], str]) -> None:
    netns = make_netns("c")
    tap = run_in_netns(netns, open_queue, "tec0", "tap")

    async def main() -> None:
        queue = AsyncQueue(tap)
        rings = [PacketRing(8, 2048) for _ in range(2)]

        async def iterate() -> None:
            async for _ in queue.batches(PacketRing(8, 2048)):
                raise AssertionError("no packet was sent")

        waiting = [asyncio.create_task(queue.recv_batch(ring)) for ring in rings]
        waiting.append(asyncio.create_task(iterate()))
        await until(lambda: queue.waiting == (3, 0), "three tasks waiting to read")
        queue.close()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        for result in results:
            assert isinstance(result, QueueClosedError), result
            assert "closed while a task waited to read" in str(result)
        assert tap.closed                   # the queue went with it
        assert not asyncio.get_running_loop().remove_reader(tap_fd)  # not watched any more
        with pytest.raises(QueueClosedError, match="is closed"):
            await queue.recv_batch(rings[0])

    tap_fd = tap.fileno()
    run(main())


def test_close_from_another_thread_wakes_readers_and_writers() -> None:
    a, b = dgram_pair(sndbuf=4096)
    with a, b:
        async def main() -> None:
            queue = AsyncQueue(a)
            with PacketRing(64, 2048) as ring:
                for _ in range(64):
                    ring.push(b"x" * 100)
                reader = asyncio.create_task(queue.recv_batch(PacketRing(8, 2048)))
                writer = asyncio.create_task(queue.send_batch(ring, ring.head, 64))
                await until(lambda: queue.waiting == (1, 1), "a reader and a blocked writer")
                closer = threading.Thread(target=queue.close)
                closer.start()
                for task in (reader, writer):
                    with pytest.raises(QueueClosedError):
                        await task
                closer.join()
            assert queue.closed and a.fileno() == -1   # an object with close() is closed too

        run(main())


def test_an_int_fd_is_left_open() -> None:
    a, b = dgram_pair()
    with a, b:
        async def main() -> None:
            async with AsyncQueue(a.fileno()) as queue:
                b.send(b"y" * 60)
                with PacketRing(8, 2048) as ring:
                    assert await queue.recv_batch(ring) == 1
                    assert ring.packet(ring.head) == b"y" * 60
            assert a.fileno() >= 0

        run(main())


# -- send waits instead of dropping -----------------------------------------------------------


def test_send_batch_waits_while_the_queue_is_full_and_completes_once_drained() -> None:
    a, b = dgram_pair(sndbuf=4096)
    with a, b:
        async def main() -> None:
            queue = AsyncQueue(a)
            payloads = [os.urandom(200 + k) for k in range(300)]
            with PacketRing(512, 2048) as ring:
                for payload in payloads:
                    ring.push(payload)
                sending = asyncio.create_task(queue.send_batch(ring, ring.head, len(payloads)))
                # The receiver reads nothing yet: the kernel's queue fills, send_batch waits.
                await until(lambda: queue.waiting == (0, 1), "send_batch to wait for room")
                assert not sending.done()
                b.setblocking(False)
                received: list[bytes] = []
                loop = asyncio.get_running_loop()
                while len(received) < len(payloads):
                    received.append(await loop.sock_recv(b, 4096))
                assert await sending == len(payloads)
                assert queue.waiting == (0, 0)
            queue.close()
            assert hashlib.sha256(b"".join(received)).digest() == \
                hashlib.sha256(b"".join(payloads)).digest()

        run(main())


def test_a_cancelled_send_says_how_many_went_out() -> None:
    a, b = dgram_pair(sndbuf=4096)
    with a, b:
        async def main() -> None:
            async with AsyncQueue(a) as queue:
                with PacketRing(256, 2048) as ring:
                    for _ in range(256):
                        ring.push(b"z" * 500)
                    sending = asyncio.create_task(queue.send_batch(ring, ring.head, 256))
                    await until(lambda: queue.waiting == (0, 1), "send_batch to wait for room")
                    sending.cancel()
                    with pytest.raises(asyncio.CancelledError) as cancelled:
                        await sending
                    assert queue.waiting == (0, 0)
            b.setblocking(False)
            queued = 0
            while True:
                try:
                    b.recv(4096)
                except BlockingIOError:
                    break
                queued += 1
            assert 0 < cancelled.value.sent == queued < 256  # type: ignore[attr-defined]

        run(main())


def test_a_udp_socket_echoes_each_datagram_to_its_sender() -> None:
    """Any fd recv_batch takes: a UDP socket's batch keeps each datagram's sender in its slot,
    and send_batch answers each one there (loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        payloads = [os.urandom(20 + k) for k in range(5)]

        async def main() -> None:
            async with AsyncQueue(server, close_queue=False) as queue:
                batches = aiter(queue)
                for payload in payloads:
                    client.sendto(payload, server.getsockname())
                echoed = 0
                while echoed < len(payloads):
                    batch = await anext(batches)
                    assert all(queue.ring.peer(k) == client.getsockname()
                               for k in batch.indices())
                    echoed += await queue.send_batch(batch.ring, batch.first, batch.count)

        run(main())
        client.settimeout(30)
        assert [client.recvfrom(2048) for _ in payloads] == \
            [(payload, server.getsockname()) for payload in payloads]


# -- batches ---------------------------------------------------------------------------------


def test_async_for_hands_out_batches_from_slot_0_and_consumes_them() -> None:
    a, b = dgram_pair()
    with a, b:
        async def main() -> None:
            async with AsyncQueue(b) as queue:
                batches = aiter(queue)
                for round_ in range(3):
                    for k in range(5):
                        a.send(bytes([round_, k]) * 30)
                    batch = await anext(batches)
                    assert batch.ring is queue.ring and batch.slots == slice(0, 5)
                    assert queue.ring.pending == 5      # the one before was consumed
                    assert [len(frame) for frame in batch.frames()] == [60] * 5
                    assert batch.packets() == [bytes([round_, k]) * 30 for k in range(5)]

        run(main())


def test_reading_into_a_full_ring_is_refused() -> None:
    a, b = dgram_pair()
    with a, b:
        async def main() -> None:
            async with AsyncQueue(b) as queue:
                with PacketRing(2, 2048) as ring:
                    ring.push(b"1" * 60)
                    ring.push(b"2" * 60)
                    with pytest.raises(BufferError, match="no free slot"):
                        await queue.recv_batch(ring)

        run(main())
