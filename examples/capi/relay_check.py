"""Move packets over Unix datagram socket pairs with the ``relay`` extension (examples/capi).

A datagram socket, like a tun fd, carries one packet per read and write. Run it with an installed
tapengine and relay (``make capi-check`` does, in fresh virtualenvs): it fails loudly on any
mismatch, and checks that neither module comes from a source checkout.
"""

from __future__ import annotations

import errno
import socket

import relay

import tapengine
from tapengine import PacketRing, open_batch_io


def socket_pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    sender, relay_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    relay_out, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (sender, relay_in, relay_out, receiver):
        sock.setblocking(False)
    return sender, relay_in, relay_out, receiver


def move(through: object, rounds: int = 8, per_round: int = 16) -> int:
    """Send numbered datagrams, relay them, check every one arrives intact and in order."""
    sender, relay_in, relay_out, receiver = socket_pairs()
    ring = PacketRing(64, 2048)
    moved = 0
    with sender, relay_in, relay_out, receiver:
        for r in range(rounds):
            payloads = [bytes([r * per_round + i]) * (1 + 97 * i) for i in range(per_round)]
            for payload in payloads:
                sender.send(payload)
            if through == "readv":
                got, put = relay.relay(relay_in.fileno(), relay_out.fileno(), ring)
            else:
                got, put = relay.relay_via(through, relay_in.fileno(), relay_out.fileno(), ring)
            assert (got, put) == (per_round, per_round), (got, put)
            assert [receiver.recv(4096) for _ in payloads] == payloads
            moved += put
        assert relay.relay(relay_in.fileno(), relay_out.fileno(), ring) == (0, 0)  # EAGAIN
    ring.push(b"\x07abc")
    assert relay.first_bytes(ring) == [7]
    return moved


def refuse_past_the_slot(io: object) -> None:
    """A length past the slot stops a C-level send with EMSGSIZE; nothing past it is read."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ring = PacketRing(4, 2048)
    with sender, receiver:
        receiver.setblocking(False)
        for i in range(3):
            ring.push(bytes([i]) * 100)
        ring.lengths[1] = 60014
        assert relay.send_unchecked(io, sender.fileno(), ring, 0, 3) == (1, errno.EMSGSIZE)
        assert receiver.recv(65536) == bytes(100)
        try:
            receiver.recv(65536)
        except BlockingIOError:
            pass
        else:
            raise AssertionError("a packet after the refused one was written")
    ring.close()


def main() -> None:
    for module in (tapengine, relay):
        where = module.__file__ or ""
        assert "site-packages" in where, f"{module.__name__} imported from {where}"
    assert relay.VIRTIO_HEADER_BYTES == 10
    print(f"readv/writev: {move('readv')} packets relayed")
    refuse_past_the_slot(None)
    print(f"dispatch, io=None: {move(None)} packets relayed")
    with open_batch_io() as io:
        assert relay.is_uring(io) == (io.backend == "io_uring")
        print(f"dispatch, io={io.backend}: {move(io)} packets relayed")
        refuse_past_the_slot(io)
    print(f"the C API of tapengine {tapengine.__version__} works from {tapengine.__file__}")


if __name__ == "__main__":
    main()
