"""A python-pytun program, run once with ``pytun`` and once with ``tapengine.compat.pytun``.

    python pytun_script.py MODULE     (inside a fresh network namespace of its own)

It does what pytun programs do (a tun and a tap, their addresses, MTU and MAC, frames both ways
between the device and the kernel's UDP sockets, persistence, multi-queue, and a list of bad
calls) and prints one JSON object: what the module answered, and what the kernel shows
(``ip -j link``/``ip -j addr``). tests/test_compat_pytun.py runs it with both modules, each in
its own namespace, and compares the two objects. Every address lives in that namespace.
"""

from __future__ import annotations

import importlib
import json
import select
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

pytun: Any = importlib.import_module(sys.argv[1])
WAIT = 10.0  # seconds: a frame the kernel sends is there long before; reached only on a bug


def kernel_link(name: str) -> dict[str, Any] | None:
    """``ip -j link show`` of ``name`` without what differs between any two runs (or None)."""
    out = subprocess.run(["ip", "-j", "-d", "link", "show", "dev", name], capture_output=True,
                         text=True, check=False)  # fmt: skip
    if out.returncode != 0:
        return None
    link = json.loads(out.stdout)[0]
    keep = ("ifname", "flags", "mtu", "operstate", "link_type", "address", "broadcast",
            "min_mtu", "max_mtu")  # fmt: skip
    info = link.get("linkinfo", {}).get("info_data", {})
    return {k: link.get(k) for k in keep} | {"tun": {k: info.get(k) for k in (
        "type", "pi", "vnet_hdr", "multi_queue", "persist")}}  # fmt: skip


def kernel_addrs(name: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True,
                         text=True, check=True)  # fmt: skip
    keep = ("family", "local", "address", "prefixlen", "broadcast", "scope", "label")
    return [{k: a.get(k) for k in keep} for a in json.loads(out.stdout)[0]["addr_info"]]


def outcome(call: Callable[[], Any]) -> Any:
    """What a call gave: its value, or the exception's type, errno and (for Error) message."""
    try:
        value = call()
    except Exception as exc:
        is_error = isinstance(exc, pytun.Error)
        return {"raised": "Error" if is_error else type(exc).__name__,
                "errno": getattr(exc, "errno", None),
                "message": str(exc) if is_error else None,
                "is_oserror": isinstance(exc, OSError)}  # fmt: skip
    return value.hex() if isinstance(value, bytes) else value


def read_until(dev: Any, wanted: Callable[[bytes], bool], size: int) -> bytes:
    """The first packet read from ``dev`` that is ``wanted`` (the kernel may send others)."""
    for _ in range(100):
        if not select.select([dev], [], [], WAIT)[0]:
            break
        packet = dev.read(size)
        if wanted(packet):
            return packet
    raise SystemExit("the expected packet never came")


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 datagram carrying UDP (checksum 0: none, allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + udp


def udp_socket(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(WAIT)
    return sock


def main() -> None:
    seen: dict[str, Any] = {}
    # No IPv6 on devices created from here on: no router solicitation among the frames read.
    for conf in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
            f.write("1")

    # A tun as pytun creates it by default: kernel-chosen name, packet information header.
    tun = pytun.TunTapDevice()
    seen["tun.name"] = tun.name
    seen["tun.addr before"] = outcome(lambda: tun.addr)
    tun.addr = "10.77.0.1"
    tun.dstaddr = "10.77.0.2"
    seen["tun.netmask default"] = tun.netmask
    tun.netmask = "255.255.255.0"
    tun.mtu = 1400
    tun.up()
    seen["tun"] = [tun.addr, tun.dstaddr, tun.netmask, tun.mtu, tun.hwaddr.hex()]
    seen["tun kernel"] = [kernel_link(tun.name), kernel_addrs(tun.name)]

    sock = udp_socket("10.77.0.1", 4000)
    sock.sendto(b"to the tun", ("10.77.0.2", 5000))
    got = read_until(tun, lambda p: p[4 + 9] == 17, 2048)  # PI + IPv4/UDP
    # the IP ID is random (the kernel's choice per datagram), and so the header checksum
    seen["tun read"] = (got[:8] + b"\0\0" + got[10:14] + b"\0\0" + got[16:]).hex()
    packet = ipv4_udp("10.77.0.2", "10.77.0.1", 5000, 4000, b"from the tun")
    seen["tun write"] = tun.write(b"\x00\x00\x08\x00" + packet)  # PI: flags, ETH_P_IP
    seen["tun write str"] = outcome(lambda: tun.write(""))
    seen["socket got"] = sock.recvfrom(100)[0].decode()
    tun.down()
    seen["tun down kernel"] = kernel_link(tun.name)

    # A tap without packet information, with a MAC, address and netmask.
    tap = pytun.TunTapDevice(name="pt%d", flags=pytun.IFF_TAP | pytun.IFF_NO_PI)
    tap.hwaddr = b"\x02\x77\x00\x00\x00\x01"
    tap.addr = "10.77.1.1"
    seen["tap.netmask classful"] = tap.netmask
    tap.netmask = "255.255.255.0"
    tap.up()
    seen["tap"] = [tap.name, tap.addr, tap.netmask, tap.dstaddr, tap.mtu, tap.hwaddr.hex()]
    seen["tap kernel"] = [kernel_link(tap.name), kernel_addrs(tap.name)]
    sock2 = udp_socket("10.77.1.1", 4001)
    sock2.sendto(b"to the tap", ("10.77.1.2", 5001))
    arp = read_until(tap, lambda f: f[12:14] == b"\x08\x06", 2048)
    seen["tap read arp"] = arp.hex()
    frame = (b"\x02\x77\x00\x00\x00\x01" + b"\x02\x77\x00\x00\x00\x02" + b"\x08\x00"
             + ipv4_udp("10.77.1.2", "10.77.1.1", 5001, 4001, b"from the tap"))  # fmt: skip
    seen["tap write"] = tap.write(frame)
    seen["socket2 got"] = sock2.recvfrom(100)[0].decode()
    seen["same name, exclusive"] = outcome(
        lambda: pytun.TunTapDevice(tap.name, pytun.IFF_TAP | pytun.IFF_NO_PI | pytun.IFF_TUN_EXCL))
    seen["same name, other type"] = outcome(lambda: pytun.TunTapDevice(tap.name, pytun.IFF_TUN))
    seen["same name, busy"] = outcome(lambda: pytun.TunTapDevice(tap.name, pytun.IFF_TAP))
    tap.close()
    seen["tap after close"] = [tap.fileno(), outcome(lambda: tap.mtu), kernel_link(tap.name)]

    # Persistence: the device outlives its fd until persist(False).
    dev = pytun.TunTapDevice(name="ptp0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    dev.persist(True)
    dev.close()
    seen["persistent"] = kernel_link("ptp0")
    dev = pytun.TunTapDevice(name="ptp0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    seen["persistent mtu"] = dev.mtu
    dev.persist(False)
    dev.close()
    seen["not persistent"] = kernel_link("ptp0")

    # A tap with the virtio-net header: what read returns starts with it (10 bytes).
    flags = pytun.IFF_TAP | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR
    vnet = pytun.TunTapDevice(name="ptv0", flags=flags)
    vnet.hwaddr = b"\x02\x77\x00\x00\x00\x03"
    vnet.addr, vnet.netmask = "10.77.2.1", "255.255.255.0"
    vnet.up()
    sock3 = udp_socket("10.77.2.1", 4002)
    sock3.sendto(b"to the vnet tap", ("10.77.2.2", 5002))
    seen["vnet read arp"] = read_until(vnet, lambda f: f[10 + 12:10 + 14] == b"\x08\x06",
                                       2048).hex()  # fmt: skip
    seen["vnet kernel"] = kernel_link("ptv0")
    vnet.close()

    # Multi-queue: each object is one queue; detach and attach them.
    flags = pytun.IFF_TAP | pytun.IFF_NO_PI | pytun.IFF_MULTI_QUEUE
    q1 = pytun.TunTapDevice(name="ptmq0", flags=flags)
    q2 = pytun.TunTapDevice(name="ptmq0", flags=flags)
    seen["mq"] = [outcome(q1.mq_attach), outcome(lambda: q1.mq_attach(False)),
                  outcome(lambda: q1.mq_attach(False)), outcome(lambda: q1.mq_attach(True)),
                  kernel_link("ptmq0") | {"address": "random"}]  # fmt: skip
    q1.close()
    q2.close()

    # Bad calls: the same exception, errno and message.
    bad = pytun.TunTapDevice(name="ptbad0", flags=pytun.IFF_TUN)
    calls: dict[str, Callable[[], Any]] = {
        "flags 0": lambda: pytun.TunTapDevice(flags=0),
        "flags tun|tap": lambda: pytun.TunTapDevice(flags=pytun.IFF_TUN | pytun.IFF_TAP),
        "flags str": lambda: pytun.TunTapDevice(flags="1"),
        "flags 2**40": lambda: pytun.TunTapDevice(flags=1 << 40),
        "name too long": lambda: pytun.TunTapDevice(name="a" * 16),
        "name with /": lambda: pytun.TunTapDevice(name="a/b"),
        "name int": lambda: pytun.TunTapDevice(name=5),
        "name NUL": lambda: pytun.TunTapDevice(name="a\0b"),
        "dev missing": lambda: pytun.TunTapDevice(dev="/nonexistent/tun"),
        "dev not tun": lambda: pytun.TunTapDevice(dev="/dev/null"),
        "addr unset": lambda: bad.addr,
        "netmask unset": lambda: setattr(bad, "netmask", "255.0.0.0"),
        "addr int": lambda: setattr(bad, "addr", 5),
        "addr bytes": lambda: setattr(bad, "addr", b"10.0.0.1"),
        "addr 300": lambda: setattr(bad, "addr", "10.0.0.300"),
        "addr non-ASCII": lambda: setattr(bad, "addr", "10.0.0.\xe9"),
        "addr 10.1": lambda: (setattr(bad, "addr", "10.1"), bad.addr)[1],
        "netmask non-contiguous": lambda: setattr(bad, "netmask", "255.0.255.0"),
        "hwaddr of a tun": lambda: setattr(bad, "hwaddr", b"\x02\0\0\0\0\x01"),
        "hwaddr str": lambda: setattr(bad, "hwaddr", "abcdef"),
        "hwaddr short": lambda: setattr(bad, "hwaddr", b"abc"),
        "name set": lambda: setattr(bad, "name", "x"),
        "mtu 0": lambda: setattr(bad, "mtu", 0),
        "mtu -1": lambda: setattr(bad, "mtu", -1),
        "mtu 10": lambda: setattr(bad, "mtu", 10),
        "mtu 10**6": lambda: setattr(bad, "mtu", 10**6),
        "mtu 2**70": lambda: setattr(bad, "mtu", 1 << 70),
        "mtu float": lambda: setattr(bad, "mtu", 1500.0),
        "persist int": lambda: bad.persist(1),
        "mq_attach single queue": bad.mq_attach,
        "mq_attach int": lambda: bad.mq_attach(1),
        "read float": lambda: bad.read(1.5),
        "read no size": lambda: bad.read(),
        "write int": lambda: bad.write(5),
        "write empty": lambda: bad.write(b""),
        "write garbage": lambda: bad.write(b"\x45" + b"\0" * 19),
    }
    seen["bad calls"] = {label: outcome(call) for label, call in calls.items()}
    bad.close()
    seen["closed"] = {label: outcome(call) for label, call in {
        "fileno": bad.fileno, "close again": bad.close, "read": lambda: bad.read(10),
        "write": lambda: bad.write(b"x"), "persist": bad.persist, "up": bad.up,
        "name": lambda: bad.name}.items()}  # fmt: skip
    tun.close()
    seen["constants"] = {name: getattr(pytun, name) for name in sorted(dir(pytun))
                         if name.startswith("IFF_")}  # fmt: skip
    seen["Error"] = [issubclass(pytun.Error, OSError), pytun.Error("x").args]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
