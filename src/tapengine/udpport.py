"""UDP socket ports: a bound, optionally connected UDP socket that the engine serves like a tun/tap.

The engine reads such a port with ``recvmmsg`` and writes it with ``sendmmsg``
(``tapengine._batchio.UdpPortIO``), into and out of the same rings as its other ports, and keeps
the peer address of each datagram in its slot. In a wire next to a tun, every IP packet the tun
hands over becomes the payload of one datagram to the remote end, and every datagram received
is written to the tun: two engines, one at each end, make a flannel-UDP-style tunnel. Next to a
tap, the datagrams carry Ethernet frames.

``open_udp_port(local, remote, netns=...)`` binds the socket to ``local`` inside namespace
``netns`` (it stays bound to that namespace, whichever thread uses it later) and connects it to
``remote``: then the kernel accepts datagrams from ``remote`` only, and sends every packet
without an address of its own there. Without ``remote`` the socket takes datagrams from anyone,
and a packet is sent only where its slot's peer address says (a stage sets it); one without is
counted as a transmit error. An ICMP error for a connected socket (its peer not listening, say
while it restarts) is counted as a receive error of the port, which keeps forwarding.

A UDP port has one socket, so it serves one worker: an engine with a UDP port runs one queue
per port.
"""

from __future__ import annotations

import errno
import socket
from types import TracebackType
from typing import Any, Self

from tapengine._batchio import UdpPortIO
from tapengine.errors import AddressError, InvalidValueError
from tapengine.netns import run_in_netns
from tapengine.tun import Offload
from tapengine.validate import (
    check_endpoint,
    check_int,
    check_netns_name,
    format_endpoint,
    quote,
)

#: Receive and send buffer asked for each socket: a full batch of 64 KiB datagrams (64 of them)
#: fits, so a burst toward a busy engine waits in the socket instead of being dropped. Set with
#: SO_RCVBUFFORCE/SO_SNDBUFFORCE when allowed (CAP_NET_ADMIN), else capped by net.core.rmem_max
#: and wmem_max.
DEFAULT_BUFFER_SIZE = 4 << 20
MIN_BUFFER_SIZE, MAX_BUFFER_SIZE = 4096, 1 << 30
#: The largest UDP payload over IPv6 without jumbograms; over IPv4 it is 65507.
MAX_PAYLOAD = 65527
MIN_PAYLOAD = 64

Endpoint = tuple[str, int] | str

_WHY = {
    errno.EADDRNOTAVAIL: "no interface of the namespace has this address",
    errno.EADDRINUSE: "another socket is bound to it",
    errno.ENETUNREACH: "the namespace has no route to it",
}
#: EACCES means one thing for bind() and another for connect().
_WHY_BIND = {**_WHY, errno.EACCES: "ports below 1024 need CAP_NET_BIND_SERVICE"}
_WHY_CONNECT = {**_WHY, errno.EACCES: "a broadcast address cannot be a peer: give one host's "
                                      "address"}


class NoLinkWatch:
    """``Port.watch`` of a port without a link of its own (a UDP or VXLAN socket): never up or
    down (``Engine.link_events`` skips it)."""

    def is_up(self) -> bool | None:
        return None

    def close(self) -> None:
        pass


class UdpPort:
    """A UDP socket served by the engine: its name, its socket (one queue) and its addresses.

    Owns its socket: ``close()`` (or leaving the ``with`` block) closes it. ``local`` is the
    address the socket is bound to (the port the kernel chose, when 0 was asked for);
    ``remote`` the one it is connected to, or None.
    """

    mode = "udp"
    vnet_hdr = False
    txqueuelen = 0
    offload = Offload(0)

    def __init__(self, sock: socket.socket, *, name: str, local: tuple[str, int],
                 remote: tuple[str, int] | None, netns: str | None,
                 max_payload: int = MAX_PAYLOAD) -> None:  # fmt: skip
        self.name = name
        self.queues = [sock]
        self.local = local
        self.remote = remote
        self.netns = netns
        self.max_payload = max_payload
        self.watch = NoLinkWatch()

    @property
    def socket(self) -> socket.socket:
        return self.queues[0]

    @property
    def nqueues(self) -> int:
        return len(self.queues)

    @property
    def slot_size(self) -> int:
        """Ring slot size: the largest payload accepted; a longer datagram is dropped and
        counted as ``truncated``, never cut."""
        return self.max_payload

    def port_io(self, queue: int) -> UdpPortIO:
        """The forwarder's reader and writer of queue ``queue`` (recvmmsg/sendmmsg)."""
        return UdpPortIO(self.queues[queue])

    def addresses(self) -> dict[str, str | None]:
        """``{"local": "10.77.0.1:4789", "remote": ..., "netns": ...}`` for stats and JSON."""
        return {"local": format_endpoint(self.local),
                "remote": format_endpoint(self.remote) if self.remote else None,
                "netns": self.netns}  # fmt: skip

    def restore_txqueuelen(self) -> None:
        """Nothing: a socket has no txqueuelen (``close_ports`` asks every port)."""

    def close(self) -> None:
        for sock in self.queues:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" -> {format_endpoint(self.remote)}" if self.remote else ""
        netns = f" netns={self.netns!r}" if self.netns else ""
        return f"<UdpPort {self.name!r} {format_endpoint(self.local)}{where}{netns}>"


def open_udp_port(local: Endpoint, remote: Endpoint | None = None, *, netns: str | None = None,
                  name: str | None = None, buffer_size: int = DEFAULT_BUFFER_SIZE,
                  max_payload: int = MAX_PAYLOAD) -> UdpPort:  # fmt: skip
    """Bind a UDP socket to ``local`` inside namespace ``netns`` (None: where this thread is) and
    connect it to ``remote`` (None: unconnected); return it as a port for ``Engine``.

    Addresses are ``"10.77.0.1:4789"``, ``"[fd77::1]:4789"`` or ``(host, port)``; both of the
    same family. Local port 0 lets the kernel choose (``port.local`` says which). ``name`` names
    the port in stats (default ``udp:`` and the local address). ``buffer_size`` is asked for as
    SO_RCVBUF and SO_SNDBUF; ``max_payload`` is the longest datagram accepted (longer ones are
    dropped and counted as ``truncated``). Every value is checked before a socket is made.
    """
    local = check_endpoint(local, "local address", allow_zero_port=True)
    if remote is not None:
        remote = check_endpoint(remote, "remote address")
        if (":" in remote[0]) != (":" in local[0]):
            raise InvalidValueError(
                f"the remote address {format_endpoint(remote)} and the local address "
                f"{format_endpoint(local)} must both be IPv4 or both IPv6"
            )
        if remote[0] in ("0.0.0.0", "::"):
            raise InvalidValueError(
                f"invalid remote address {format_endpoint(remote)}: datagrams cannot be sent to "
                "the unspecified address"
            )
    if netns is not None:
        check_netns_name(netns)
    if name is not None and (not isinstance(name, str) or not name or len(name) > 64
                             or not name.isprintable()):
        raise InvalidValueError(f"invalid UDP port name {quote(name)}: expected 1 to 64 "
                                "printable characters")  # fmt: skip
    check_int(buffer_size, "socket buffer size", MIN_BUFFER_SIZE, MAX_BUFFER_SIZE)
    check_int(max_payload, "largest UDP payload", MIN_PAYLOAD, MAX_PAYLOAD)
    sock = run_in_netns(netns, _open_socket, local, remote, buffer_size)
    local = (local[0], sock.getsockname()[1])
    return UdpPort(sock, name=name or "udp:" + format_endpoint(local), local=local,
                   remote=remote, netns=netns, max_payload=max_payload)  # fmt: skip


def _open_socket(local: tuple[str, int], remote: tuple[str, int] | None,
                 buffer_size: int) -> socket.socket:  # fmt: skip
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:   # "::" means IPv6 only, never IPv4-mapped peers
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _set_buffer(sock, socket.SO_RCVBUF, 33, buffer_size)     # 33: SO_RCVBUFFORCE
        _set_buffer(sock, socket.SO_SNDBUF, 32, buffer_size)     # 32: SO_SNDBUFFORCE
        _call(sock.bind, local, f"cannot bind a UDP socket to {format_endpoint(local)}",
              _WHY_BIND)
        if remote is not None:
            _call(sock.connect, remote,
                  f"cannot connect the UDP socket to {format_endpoint(remote)}", _WHY_CONNECT)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_buffer(sock: socket.socket, option: int, force: int, size: int) -> None:
    """Ask for ``size`` bytes: past net.core.[rw]mem_max where allowed, else up to it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)


def _call(method: Any, address: tuple[str, int], what: str, whys: dict[int, str]) -> None:
    try:
        method(address)
    except OSError as err:
        code = err.errno or errno.EINVAL
        why = whys.get(code, "")
        raise AddressError(code, f"{what}: {err.strerror}" + (f" ({why})" if why else "")) from None


__all__ = ["DEFAULT_BUFFER_SIZE", "MAX_PAYLOAD", "UdpPort", "open_udp_port"]
