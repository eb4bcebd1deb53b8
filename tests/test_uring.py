"""io_uring specifics: registered files and ring slabs, and unlinked writes with exact counts.

Driven through SOCK_SEQPACKET socket pairs (one datagram per read and write, as a tun/tap fd
gives one packet), so no privilege is needed; the kernel's socket is the independent side: what
it delivers is compared byte for byte with what was sent, and its own refusal of an oversize
datagram (``EMSGSIZE``) is the failed write in the middle of a batch.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator

import pytest

from netutil import wait_until
from tapengine import PacketRing
from tapengine._forward import Forwarder
from tapengine._uring import UringIO
from test_forward import MAC, Harness, frame

pytestmark = pytest.mark.usefixtures("needs_io_uring")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    inner, outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    inner.setblocking(False)
    outer.setblocking(False)
    with inner, outer:
        yield inner, outer


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(70000))
        except BlockingIOError:
            return got


@pytest.mark.parametrize("vnet_hdr", [False, True], ids=["plain", "vnet"])
def test_a_forwarder_registers_its_ports_and_moves_the_same_bytes(vnet_hdr: bool) -> None:
    # The engine's configuration: unlinked writes, batches of one by read()/write(), fds and
    # slabs registered for the run. With a "virtio-net header" (the first 10 bytes of each
    # datagram here) header and frame are one READ_FIXED/WRITE_FIXED buffer.
    uring = UringIO(64, linked_writes=False, direct_small=True)
    h = Harness(Forwarder("wire", io=uring), 2, vnet_hdr=vnet_hdr, slot_size=2048)
    hdr = bytes(10) if vnet_hdr else b""
    there = [hdr + frame(MAC[1], MAC[0], bytes([k]) * (60 + k)) for k in range(120)]
    back = [hdr + frame(MAC[0], MAC[1], bytes([k]) * (200 - k)) for k in range(50)]
    h.thread.start()
    try:
        wait_until(lambda: uring.stats()["registered_buffers"] == 2, 30, "the registration")
        assert uring.stats()["registered_files"] == 2 and uring.register_error == ""
        for port, frames in ((0, there), (1, back)):
            for data in frames:
                h.send(port, data)
        assert [h.recv_all(1), h.recv_all(0)] == [there, back]
        stats = uring.stats()       # a batch of one goes by read()/write(), the rest fixed
        assert stats["fixed_ops"] > 0 and stats["fixed_ops"] + stats["direct"] >= 2 * 170
    finally:
        h.close()               # unregisters, then closes the io_uring
    assert uring.closed


@pytest.mark.parametrize("linked", [True, False], ids=["linked", "unlinked"])
def test_a_failed_write_mid_batch_leaves_exactly_the_sent_packets_first(
        pair: tuple[socket.socket, socket.socket], linked: bool) -> None:
    inner, outer = pair
    inner.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # the kernel doubles it
    small = [bytes([k]) * (64 + k) for k in range(4)]
    big = b"B" * 12000          # more than the send buffer can ever hold: EMSGSIZE
    ring = PacketRing(8, 16384)
    for data in (small[0], big, small[1], small[2], small[3]):
        ring.push(data)
    with UringIO(8, linked_writes=linked) as uring:
        uring.register([inner], [ring])
        with pytest.raises(OSError) as caught:
            uring.send_batch(inner, ring, 0, 5)
        assert caught.value.errno == errno.EMSGSIZE
        sent = drain(outer)
        if linked:              # the kernel cancelled everything after the failure
            assert sent == small[:1] and caught.value.completed == 1  # type: ignore[attr-defined]
        else:                   # everything else went out, in order, and now comes first
            assert sent == small and caught.value.completed == 4  # type: ignore[attr-defined]
            assert [ring.packet(k) for k in range(5)] == [*small, big]
            assert uring.stats()["reordered"] == 3
        with pytest.raises(BufferError):
            ring.close()        # registered: in use until unregistered
        uring.unregister()
    ring.close()


def test_registration_is_refused_with_a_reason(pair: tuple[socket.socket, socket.socket]) -> None:
    inner, _ = pair
    closed = PacketRing(4, 64)
    closed.close()
    with UringIO(8) as uring:
        with pytest.raises(ValueError, match="closed ring"):
            uring.register([inner], [closed])
        refused: list[BaseException] = []

        def elsewhere() -> None:
            try:
                uring.register([inner])
            except RuntimeError as exc:
                refused.append(exc)

        uring.register([inner])         # this thread takes the io_uring
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(30)
        assert len(refused) == 1 and "another thread" in str(refused[0])
        assert uring.stats()["registered_files"] == 1
