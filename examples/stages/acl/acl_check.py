"""Run the ``port_acl`` C stage (examples/stages/acl) inside a forwarder and check what it drops.

The forwarder's two ports are SOCK_SEQPACKET socket pairs (one datagram per read and write, as a
tap gives one frame), so no privilege is needed. UDP to port 9 must be dropped and counted under
the stage's name; UDP to port 10 and TCP to port 9 must pass, byte for byte. With
``--installed`` it also checks that tapengine and port_acl come from site-packages (``make
capi-check`` runs it so, against the wheel).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

import port_acl

import tapengine
from tapengine import Forwarder, PacketRing
from tapengine._stage import STAGE_COUNTER_NAMES


def ipv4_frame(proto: int, dport: int, payload: bytes) -> bytes:
    """An Ethernet/IPv4 frame to ``dport``; checksums are not looked at by anyone here."""
    l4 = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) if proto == 17 else \
        struct.pack("!HHIIBBHHH", 40000, dport, 0, 0, 0x50, 0x18, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + len(payload), 0, 0, 64, proto, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return bytes.fromhex("020000000002" "020000000001" "0800") + ip + l4 + payload


def main() -> None:
    if "--installed" in sys.argv:
        for module in (tapengine, port_acl):
            where = module.__file__ or ""
            assert "site-packages" in where, f"{module.__name__} imported from {where}"
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    for inner, outer in pairs:
        inner.setblocking(False)
        outer.settimeout(10)
    forwarder = Forwarder("wire")
    for inner, _ in pairs:
        forwarder.add_port(inner.fileno(), PacketRing(64, 2048))
    forwarder.add_stage(port_acl.PortAcl(udp=[9]))
    thread = threading.Thread(target=forwarder.run)
    thread.start()
    try:
        blocked = [ipv4_frame(17, 9, b"blocked %d" % i) for i in range(50)]
        passing = [ipv4_frame(17, 10, b"udp %d" % i) for i in range(50)]
        passing += [ipv4_frame(6, 9, b"tcp %d" % i) for i in range(50)]
        for frame in blocked + passing:
            pairs[0][1].send(frame)
        got = [pairs[1][1].recv(4096) for _ in passing]
        assert got == passing, "the frames that passed differ from those sent"
        counters = dict(zip(STAGE_COUNTER_NAMES, forwarder.stage_counters[0], strict=True))
        deadline = time.monotonic() + 10
        while counters["seen"] < len(blocked) + len(passing) and time.monotonic() < deadline:
            time.sleep(0.01)
            counters = dict(zip(STAGE_COUNTER_NAMES, forwarder.stage_counters[0], strict=True))
        assert counters["seen"] == 150 and counters["dropped"] == 50, counters
        pairs[1][1].setblocking(False)
        try:
            extra = pairs[1][1].recv(4096)
        except BlockingIOError:
            extra = b""
        assert not extra, "a blocked frame came through"
    finally:
        forwarder.stop()
        thread.join()
        forwarder.close()
    print(f"port_acl: {counters['dropped']} of {counters['seen']} frames dropped without the "
          f"GIL ({counters['ns'] / counters['batches']:,.0f} ns per batch), "
          f"tapengine {tapengine.__version__} from {tapengine.__file__}")


if __name__ == "__main__":
    main()
