"""VXLAN ports (RFC 7348): the control side of ``tapengine._vxlan``.

``open_vxlan_port(vni, local, remotes, ...)`` opens the underlay sockets (in the namespace the
caller runs in, or ``netns``) and returns a ``VxlanPort`` that an ``Engine`` serves next to taps,
as one more port of a switch or the far end of a wire. The data plane is ``tapengine._vxlan``:
decapsulation into the ring's headroom, encapsulation with a second iovec, learning and head-end
replication, all in the forwarder's loop without the GIL.

What the sockets are set up for:

- one socket bound to ``local``:``dstport`` receives; ``dstport`` defaults to 4789 (IANA). The
  Linux kernel's own default is 8472, which flannel keeps: join such a network with
  ``dstport=8472``;
- a pool of at least 16 sockets sends, each bound to ``local`` and a port of 49152-65535 (ports
  already taken, e.g. by the namespace's ephemeral range, are skipped); a frame leaves from the
  socket its inner flow hashes to, so the UDP source port spreads flows over ECMP paths and RSS
  queues and stays the same for one flow;
- over IPv4 the UDP checksum is zero (``SO_NO_CHECK``, RFC 7348's SHOULD) and DF is set
  (``IP_PMTUDISC_DO``: never fragmented); over IPv6 the checksum is always computed (kernels drop
  zero-checksum IPv6 VXLAN by default) and nothing is fragmented either. On receive both are
  accepted: IPv4 with or without a checksum (kernel peers compute one by default), IPv6 with a
  zero checksum too (``UDP_NO_CHECK6_RX``, the kernel's ``udp6zerocsumrx``).

Security, stricter than the kernel (which accepts and learns from any sender): only datagrams
from a ``remote`` or an ``fdb`` VTEP are looked at; anything else is counted as ``unknown_vtep``
and never learned. Every address the port sends to is one of those, so nothing received from the
underlay can make it send elsewhere.

The MTU: a frame plus 50 bytes (IPv4) or 70 bytes (IPv6) must fit the MTU of the underlay device
that routes to each VTEP (looked up with a netlink route query in the underlay namespace, never
assumed). ``VxlanPort.max_frame_mtu`` is the largest tap MTU that fits; ``check_tap_mtu`` refuses
a tap above it with the command that fixes it (a tap the command creates itself gets that MTU).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from tapengine._ring import MAX_SLOT_SIZE
from tapengine._vxlan import COUNTER_NAMES, DROP_REASONS, IANA_PORT, MAX_VNI, VxlanIO
from tapengine.errors import InvalidValueError, oserror
from tapengine.netlink import netlink_errors, rtnl, where
from tapengine.netns import run_in_netns
from tapengine.tun import Offload
from tapengine.udpport import NoLinkWatch
from tapengine.validate import check_int, check_ip, check_mac, quote

__all__ = [
    "COUNTER_NAMES", "DROP_REASONS", "IANA_PORT", "KERNEL_PORT", "OVERHEAD", "VxlanPort",
    "check_tap_mtu", "format_vxlan", "open_vxlan_port", "parse_fdb",
]  # fmt: skip

#: The Linux kernel's default VXLAN port (pre-IANA), which flannel's vxlan backend keeps.
KERNEL_PORT = 8472
#: Bytes a frame grows by on the underlay: outer IP + UDP + VXLAN header (+ the inner Ethernet
#: header, which a tap's MTU does not count), by IP version.
OVERHEAD = {4: 20 + 8 + 8 + 14, 6: 40 + 8 + 8 + 14}
#: Sending sockets in the pool (source ports), and the range they are bound in.
DEFAULT_POOL = 16
MIN_POOL, MAX_POOL = 1, 64
SOURCE_PORTS = (49152, 65535)
#: Socket buffers asked for (the kernel caps them at net.core.[rw]mem_max unless privileged).
RECV_BUFFER = 8 << 20
SEND_BUFFER = 4 << 20

# Socket options the socket module does not name (linux/socket.h, linux/in.h, linux/udp.h).
SO_NO_CHECK = 11
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2
UDP_NO_CHECK6_RX = 102
UDP_SEGMENT = 103
RTAX_MTU = 2


def parse_fdb(text: str) -> tuple[str, str]:
    """``MAC=ADDR`` (a static FDB entry, as flannel programs the kernel) as ``(mac, addr)``."""
    mac, sep, addr = text.partition("=")
    if not sep:
        raise InvalidValueError(f"invalid FDB entry {quote(text)}: expected MAC=ADDR, e.g. "
                                "02:00:00:00:00:01=192.0.2.2")
    return check_mac(mac.strip()).lower(), str(check_ip(addr.strip()))


@dataclass(frozen=True)
class UnderlayRoute:
    """How the underlay reaches one VTEP: its device and the MTU it allows."""

    vtep: str
    device: str
    mtu: int


class VxlanPort:
    """A VXLAN tunnel endpoint served by an ``Engine`` like a tap port (one queue, Ethernet).

    ``io`` is the data-plane ``VxlanIO``; ``vteps`` every address it may send to (remotes
    first); ``routes`` the underlay device and MTU toward each. A context manager; ``close()``
    closes its sockets.
    """

    mode = "tap"
    vnet_hdr = False
    offload = Offload(0)
    nqueues = 1

    def __init__(self, io: VxlanIO, *, local: str, dstport: int, remotes: Sequence[str],
                 vteps: Sequence[str], routes: Sequence[UnderlayRoute],
                 netns: str | None) -> None:  # fmt: skip
        self.io = io
        self.vni = io.vni
        self.name = f"vxlan{io.vni}"
        self.local = local
        self.dstport = dstport
        self.remotes = list(remotes)
        self.vteps = list(vteps)
        self.routes = list(routes)
        self.netns = netns
        self.family = ipaddress.ip_address(local).version
        self.watch = NoLinkWatch()
        self.mtu = self.max_frame_mtu
        self.features: dict[str, str] = {}     # offload -> "on" or "off (why)"
        self.vxlan_offload = True               # GSO and coalescing wanted (when possible)

    @property
    def max_frame_mtu(self) -> int:
        """The largest tap MTU whose frames fit every underlay path once encapsulated."""
        return min(route.mtu for route in self.routes) - OVERHEAD[self.family]

    @property
    def slot_size(self) -> int:
        """Ring slots for the largest inner frame the underlay can carry (with a VLAN tag), or
        for 64 KiB superframes when received TCP segments are coalesced."""
        if self.io.coalesce:
            return MAX_SLOT_SIZE
        return max(route.mtu for route in self.routes) - OVERHEAD[self.family] + 14 + 4

    def coalesce_toward(self, taps: Sequence[Any]) -> bool:
        """Coalesce received TCP segments of one flow into superframes (as the kernel's GRO
        does) when every one of ``taps`` takes them (a virtio-net header with TSO4 and TSO6);
        ``features["coalesce"]`` says whether it is on, and why not. Before the engine starts."""
        if not self.vxlan_offload:
            self.features["coalesce"] = "off (asked)"
        else:
            unable = [tap.name for tap in taps if not (
                tap.vnet_hdr and Offload.TSO4 in tap.offload and Offload.TSO6 in tap.offload)]
            self.features["coalesce"] = (f"off ({', '.join(unable)} takes no TCP superframes)"
                                         if unable else "on")
        self.io.coalesce = self.features["coalesce"] == "on"
        return self.io.coalesce

    def port_io(self, worker: int) -> VxlanIO:
        """The data-plane port for worker ``worker`` (one worker: a VXLAN port has one queue)."""
        if worker:
            raise ValueError("a VXLAN port is served by one worker")
        return self.io

    def close(self) -> None:
        self.io.close()

    def counters(self) -> dict[str, int]:
        return dict(self.io.counter_dict())

    def table(self) -> list[dict[str, Any]]:
        """The VTEP table: each MAC with the VTEP behind it, its age and whether it is static."""
        return [{"mac": mac, "vtep": self.vteps[vtep], "age": round(age, 1), "static": static}
                for mac, vtep, age, static in self.io.entries()]

    def info(self) -> dict[str, Any]:
        """What ``forward --json`` shows of the port: configuration, counters, table."""
        counters = self.counters()
        return {
            "vni": self.vni, "local": self.local, "dstport": self.dstport,
            "features": {**self.features, "gso": "on" if self.io.gso else self.features.get(
                "gso", "off (the kernel refused a GSO send)")},
            "remotes": self.remotes, "source_ports": self.io.source_ports(),
            "underlay": [{"vtep": r.vtep, "device": r.device, "mtu": r.mtu} for r in self.routes],
            "counters": {k: v for k, v in counters.items() if not k.startswith("drop_")},
            "drops": {reason: counters["drop_" + reason] for reason in DROP_REASONS
                      if counters["drop_" + reason]},
            "fdb": self.table(),
        }

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<VxlanPort VNI {self.vni} {self.local}:{self.dstport} -> "
                f"{', '.join(self.remotes) or 'no remote'}>")


def format_vxlan(name: str, info: dict[str, Any]) -> str:
    """The human lines of a VXLAN port (``VxlanPort.info()``) in the final stats."""
    counters = info["counters"]
    lines = [f"{name}: VNI {info['vni']}, {info['local']}:{info['dstport']}, "
             f"{counters['rx_datagrams']} datagrams in, {counters['tx_datagrams']} out "
             f"({counters['flooded']} frames replicated to {len(info['remotes'])} remote(s)), "
             f"{len(info['fdb'])} MACs known"]
    if info["drops"]:
        lines.append(f"drops on {name} (underlay): " + ", ".join(
            f"{reason} {n}" for reason, n in info["drops"].items()))
    return "\n".join(lines)


def _family_of(address: str) -> int:
    return ipaddress.ip_address(address).version


#: rtm_type of a route to a broadcast address (linux/rtnetlink.h).
RTN_BROADCAST = 3


def underlay_route(vtep: str, netns: str | None) -> UnderlayRoute:
    """The device and MTU the underlay (namespace ``netns``) uses toward ``vtep``: a route's own
    ``mtu`` metric when it has one, else the device's MTU."""
    from pyroute2.netlink.exceptions import NetlinkError

    with rtnl(netns) as ipr:
        try:
            route = ipr.route("get", dst=vtep)[0]
        except NetlinkError as err:
            raise oserror(err.code, f"no route to VTEP {vtep} in {where(netns)} (add one, or "
                          "name another VTEP)") from None
        index = route.get_attr("RTA_OIF")
        with netlink_errors(f"cannot read the device that routes to {vtep}"):
            link = ipr.link("get", index=index)[0]
        if route["type"] == RTN_BROADCAST:   # a subnet's broadcast: sendto() is EACCES
            raise InvalidValueError(f"VTEP {vtep} is the broadcast address of the subnet of "
                                    f"{link.get_attr('IFLA_IFNAME')} in {where(netns)}: give "
                                    "each VTEP's own address")  # fmt: skip
        mtu = int(link.get_attr("IFLA_MTU"))
        metrics = route.get_attr("RTA_METRICS")
        if metrics is not None:
            for name, value in metrics.get("attrs", []):
                if name == "RTAX_MTU" and value:
                    mtu = min(mtu, int(value))
        return UnderlayRoute(vtep, str(link.get_attr("IFLA_IFNAME")), mtu)


def _open_socket(family: int, local: str, port: int, *, receive: bool) -> socket.socket:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = socket.socket(af, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if family == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if receive:
            _buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, RECV_BUFFER)
            if family == 6:
                sock.setsockopt(socket.IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)
        else:
            _buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, SEND_BUFFER)
            if family == 4:
                sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
                sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
        sock.bind((local, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)   # past rmem_max/wmem_max (privileged)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _open_pool(family: int, local: str, size: int) -> list[socket.socket]:
    """``size`` sending sockets bound to ports spread over 49152-65535, skipping taken ones."""
    low, high = SOURCE_PORTS
    span = (high - low + 1) // size
    pool: list[socket.socket] = []
    try:
        for k in range(size):
            for port in range(low + k * span, low + (k + 1) * span):
                try:
                    pool.append(_open_socket(family, local, port, receive=False))
                    break
                except OSError as err:
                    if err.errno != errno.EADDRINUSE:
                        raise
            else:
                raise oserror(errno.EADDRINUSE, f"every UDP port from {low + k * span} to "
                                   f"{low + (k + 1) * span - 1} is taken on {local}: free some, "
                                   "or ask for a smaller --source-ports pool")  # fmt: skip
    except BaseException:
        for sock in pool:
            sock.close()
        raise
    return pool


def _probe_gso(sock: socket.socket) -> str:
    """``"on"`` when the kernel takes UDP_SEGMENT (Linux 4.18+), else ``"off (why)"``."""
    try:
        sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
    except OSError as err:
        return f"off (UDP_SEGMENT: {err.strerror})"
    return "on"


def _bind_error(err: OSError, local: str, dstport: int, netns: str | None) -> OSError:
    if err.errno == errno.EADDRNOTAVAIL:
        return oserror(err.errno, f"cannot bind the VXLAN socket to {local}: no interface "
                            f"in {where(netns)} has that address (give --local an address of "
                            "this host, or --underlay-netns the namespace that has it)")
    if err.errno == errno.EADDRINUSE:
        return oserror(err.errno, f"UDP port {dstport} on {local} is taken (a kernel vxlan "
                            "device or another tapengine there?): stop it, or use another "
                            "--dstport")  # fmt: skip
    return err


def _unreachable_vtep(vtep: ipaddress.IPv4Address | ipaddress.IPv6Address,
                      local: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why no datagram can reach another host at ``vtep`` ("" if one can): the unspecified
    address, the limited broadcast, loopback from a non-loopback ``local``, or an IPv6
    link-local address (it needs a scope, which an address alone cannot give)."""
    if vtep.is_unspecified:
        return "is the unspecified address: datagrams cannot be sent to it"
    if vtep == ipaddress.IPv4Address("255.255.255.255"):
        return "is the broadcast address: give each VTEP's own address"
    if vtep.is_loopback and not local.is_loopback:
        return f"is a loopback address: it cannot be reached from --local {local}"
    if vtep.version == 6 and vtep.is_link_local:
        return "is link-local: it needs a scope (%dev), which a VTEP cannot give; use a " \
               "global or ULA address"
    return ""


def open_vxlan_port(vni: int, local: str, remotes: Iterable[str] = (), *,
                    dstport: int = IANA_PORT, fdb: Iterable[tuple[str, str]] = (),
                    netns: str | None = None, ageing: float = 300.0, table_size: int = 4096,
                    pool: int = DEFAULT_POOL, name: str | None = None,
                    offload: bool = True) -> VxlanPort:  # fmt: skip
    """A VXLAN port (``name``, default ``vxlanVNI``): VNI ``vni``, underlay address ``local``
    (bound, IPv4 or IPv6), broadcast and unknown unicast replicated to every address of
    ``remotes``, static ``fdb`` entries
    ``(mac, vtep)``, UDP port ``dstport``, sockets opened in namespace ``netns`` (None: the one
    the calling thread is in). ``pool`` sending sockets (source ports). ``offload``: send runs
    of datagrams to one VTEP as one UDP GSO send when the kernel has it (probed), and allow
    ``coalesce_toward``; ``features`` says what is in use, and why not."""
    check_int(vni, "VNI", 0, MAX_VNI)
    check_int(dstport, "VXLAN port", 1, 65535)
    check_int(pool, "source port pool size", MIN_POOL, MAX_POOL)
    local = str(check_ip(local))
    family = _family_of(local)
    remotes = [str(check_ip(remote)) for remote in remotes]
    fdb = [(check_mac(mac).lower(), str(check_ip(vtep))) for mac, vtep in fdb]
    if not remotes and not fdb:
        raise InvalidValueError("a VXLAN port needs at least one --remote or --fdb VTEP to talk to")
    vteps = list(dict.fromkeys(remotes))
    if len(vteps) != len(remotes):
        raise InvalidValueError(f"a remote is listed twice: {', '.join(remotes)}")
    vteps += [vtep for _, vtep in fdb if vtep not in vteps]
    for vtep in vteps:
        if _family_of(vtep) != family:
            raise InvalidValueError(f"VTEP {vtep} is not of the family of --local {local} "
                                    "(the underlay is all IPv4 or all IPv6)")
        if vtep == local:
            raise InvalidValueError(f"VTEP {vtep} is the local address itself")
        why = _unreachable_vtep(ipaddress.ip_address(vtep), ipaddress.ip_address(local))
        if why:
            raise InvalidValueError(f"VTEP {vtep} {why}")
    macs = [mac for mac, _ in fdb]
    if len(set(macs)) != len(macs):
        raise InvalidValueError(f"a MAC has two --fdb entries: {', '.join(macs)}")

    def open_all() -> tuple[list[UnderlayRoute], socket.socket, list[socket.socket]]:
        routes = [underlay_route(vtep, netns) for vtep in vteps]
        try:
            receiver = _open_socket(family, local, dstport, receive=True)
        except OSError as err:
            raise _bind_error(err, local, dstport, netns) from None
        try:
            senders = _open_pool(family, local, pool)
        except BaseException:
            receiver.close()
            raise
        return routes, receiver, senders

    routes, receiver, senders = run_in_netns(netns, open_all)
    features = {"gso": _probe_gso(senders[0]) if offload else "off (asked)"}
    try:
        io = VxlanIO(receiver, senders, vni, [(vtep, dstport) for vtep in vteps], len(remotes),
                     table_size=table_size, ageing=ageing, gso=features["gso"] == "on")
        for mac, vtep in fdb:
            io.add_static(mac, vteps.index(vtep))
    finally:
        receiver.close()            # the VxlanIO keeps its own dup()s
        for sock in senders:
            sock.close()
    port = VxlanPort(io, local=local, dstport=dstport, remotes=remotes, vteps=vteps,
                     routes=routes, netns=netns)
    port.features = features
    port.vxlan_offload = offload
    if name is not None:
        port.name = name
    too_small = [route for route in routes if route.mtu - OVERHEAD[family] < 68]
    if too_small:
        port.close()
        route = too_small[0]
        raise InvalidValueError(f"the underlay toward {route.vtep} ({route.device}, MTU "
                                f"{route.mtu}) is too small for VXLAN over IPv{family}")
    return port


def check_tap_mtu(port: VxlanPort, name: str, mtu: int) -> None:
    """Refuse tap ``name`` of MTU ``mtu`` when its frames would not fit the underlay once
    encapsulated (they would be dropped: DF is set), saying the command that fixes it."""
    limit = port.max_frame_mtu
    if mtu <= limit:
        return
    route = min(port.routes, key=lambda r: r.mtu)
    raise InvalidValueError(
        f"{name}'s MTU {mtu} does not fit the VXLAN underlay: {route.device} (MTU {route.mtu}) "
        f"toward {route.vtep} leaves {limit} for frames over IPv{port.family}; set it with "
        f"'ip link set {name} mtu {limit}', or raise the underlay's MTU")

