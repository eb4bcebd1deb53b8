"""Test plumbing for the forwarding tests: taps moved into namespaces, kernel TCP transfers with
digests, pings and kernel counters. Written on pyroute2 and the kernel's own tools (ping, sysctl),
independent of the engine under test."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

T = TypeVar("T")


def in_netns(name: str, func: Callable[..., T], *args: Any) -> T:
    """Call ``func(*args)`` in a short-lived thread inside namespace ``name``.

    The thread dies afterwards, so it never needs to switch back; sockets made there stay bound
    to that namespace.
    """
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            pyroute2_netns.setns(name, flags=0)
            outcome["result"] = func(*args)
        except BaseException as exc:  # handed back below
            outcome["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@dataclass
class Host:
    """A namespace holding one tap, addressed ``ip``."""

    netns: str
    ifname: str
    ip: str
    mac: str = ""


def quiet_ipv6(netns: str) -> None:
    """No IPv6 in ``netns``: no router solicitations or MLD reports muddying frame counts."""
    for scope in ("all", "default"):
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                        f"net.ipv6.conf.{scope}.disable_ipv6=1"], check=True)


def attach(ifname: str, netns: str, ip: str, *, prefixlen: int = 24) -> Host:
    """Move link ``ifname`` from here into ``netns``, address it and bring it up."""
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        ipr.link("set", index=index, net_ns_fd=netns)
    with IPRoute(netns=netns) as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        mac = ipr.link("get", index=index)[0].get("IFLA_ADDRESS") or ""
    return Host(netns, ifname, ip, mac)


def add_neighbor(host: Host, other: Host) -> None:
    with IPRoute(netns=host.netns) as ipr:
        (index,) = ipr.link_lookup(ifname=host.ifname)
        ipr.neigh("add", dst=other.ip, lladdr=other.mac, ifindex=index, state="permanent")


def kernel_stats(host: Host) -> dict[str, int]:
    with IPRoute(netns=host.netns) as ipr:
        (index,) = ipr.link_lookup(ifname=host.ifname)
        return dict(ipr.link("get", index=index)[0].get("IFLA_STATS64"))


def link_exists(ifname: str, netns: str | None = None) -> bool:
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def delete_link(host: Host) -> None:
    with IPRoute(netns=host.netns) as ipr:
        (index,) = ipr.link_lookup(ifname=host.ifname)
        ipr.link("del", index=index)


def ping(src: Host, dst: Host, count: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", src.netns, "ping", "-c", str(count), "-i", "0.2", "-W", "2",
         dst.ip], capture_output=True, text=True, timeout=30,
    )


def udp_send(src: Host, dst: Host, payloads: list[bytes], port: int = 47001) -> None:
    sock = in_netns(src.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        for payload in payloads:
            sock.sendto(payload, (dst.ip, port))


CHUNK = 1 << 20


def tcp_transfer(src: Host, dst: Host, nbytes: int, *, timeout: float = 120.0,
                 during: Callable[[int], None] | None = None) -> tuple[str, str, int]:
    """Send ``nbytes`` over the kernel's TCP from ``src`` to ``dst``.

    Returns the sender's and the receiver's SHA-256 and the bytes received. Every 1 MiB chunk
    starts with its index, so a lost, repeated or reordered chunk changes the digest.
    ``during(sent)`` is called after each chunk sent (to disturb the transfer on purpose).
    """
    listener = in_netns(dst.netns, socket.create_server, (dst.ip, 0))
    client = in_netns(src.netns, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    base = os.urandom(CHUNK)
    received = {"digest": "", "bytes": 0}

    def serve() -> None:
        listener.settimeout(timeout)
        conn, _ = listener.accept()
        conn.settimeout(timeout)
        digest = hashlib.sha256()
        count = 0
        with conn:
            while chunk := conn.recv(1 << 18):
                digest.update(chunk)
                count += len(chunk)
        received.update(digest=digest.hexdigest(), bytes=count)

    server = threading.Thread(target=serve)
    server.start()
    sent = hashlib.sha256()
    try:
        with client:
            client.settimeout(timeout)
            client.connect((dst.ip, listener.getsockname()[1]))
            done = 0
            index = 0
            while done < nbytes:
                chunk = index.to_bytes(8, "big") + base[8:min(CHUNK, nbytes - done)]
                client.sendall(chunk)
                sent.update(chunk)
                done += len(chunk)
                index += 1
                if during:
                    during(done)
    finally:
        server.join(timeout)
        listener.close()
    return sent.hexdigest(), str(received["digest"]), int(received["bytes"])
