"""Test plumbing for the VXLAN interop tests: an underlay and hosts whose overlay is the Linux
kernel's own ``vxlan`` device, built with iproute2 (``ip``, ``bridge``) only, independent of the
engine under test.

The layout (every namespace carries the test's prefix; u holds the underlay's bridge)::

    ca --tap0-- [tapengine on a]  --+
    cb --veth-- br0 + vx on b      --+-- u: the underlay bridge
    cc --veth-- br0 + vx on c      --+
                x (plain sockets)  --+

Container a's tap is served by tapengine (or, for the baseline, container a has a veth to a
bridge with a kernel vxlan device on host a); b and c are pure kernel: a bridge ``br0`` with a
``vxlan`` device ``vx`` and a veth to their container. x sends raw datagrams.

Underlay addresses: 10.77.13.N/24 and fd77:13::N/64 (a=1, b=2, c=3, x=4, and x also .5 / ::5 as a
non-peer); overlay (containers): 10.99.0.N/24 with IPv6 off, so no router solicitation or MLD
report adds frames to what a test counts.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import socket
import struct
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fwdnet import Host, in_netns, quiet_ipv6

HOSTS = {"a": 1, "b": 2, "c": 3, "x": 4}
#: Overlay MTU of the containers: fits an IPv6 underlay of 1500 (1500 - 70).
OVERLAY_MTU = 1400


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip [-n NETNS] ARGS``; returns its stdout."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def underlay_addr(host: str, family: int, n: int | None = None) -> str:
    n = HOSTS[host] if n is None else n
    return f"10.77.13.{n}" if family == 4 else f"fd77:13::{n}"


@dataclass
class Net:
    """The namespaces of one test module, made once, removed by ``close``."""

    prefix: str
    made: list[str] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return self.prefix + name

    def host(self, name: str) -> Host:
        """The container behind host ``name`` as a ``fwdnet.Host`` (its overlay interface)."""
        return Host(self.ns("c" + name), "tap0" if name == "a" else "eth0",
                    f"10.99.0.{HOSTS[name]}", self.container_mac(name))

    def container_mac(self, name: str) -> str:
        return f"02:99:00:00:00:{HOSTS[name]:02x}"

    def build(self) -> None:
        for name in ("u", *HOSTS, "ca", "cb", "cc"):
            ip("netns", "add", self.ns(name))
            self.made.append(self.ns(name))
            ip("link", "set", "lo", "up", netns=self.ns(name))
        u = self.ns("u")
        ip("link", "add", "name", "ubr", "type", "bridge", netns=u)
        ip("link", "set", "ubr", "up", netns=u)
        for name, n in HOSTS.items():
            ip("link", "add", "name", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns",
               self.ns(name), netns=u)
            ip("link", "set", f"v{name}", "master", "ubr", "up", netns=u)
            host = self.ns(name)
            ip("addr", "add", f"10.77.13.{n}/24", "dev", "eth0", netns=host)
            ip("addr", "add", f"fd77:13::{n}/64", "dev", "eth0", "nodad", netns=host)
            ip("link", "set", "eth0", "up", netns=host)
            if name in ("b", "c"):      # kernel VTEPs sending to tapengine's sockets
                in_netns(host, tx_checksum_off, "eth0")
            # links made later (bridge, vxlan, veth) without IPv6: no RS/MLD on the overlay
            subprocess.run(["ip", "netns", "exec", host, "sysctl", "-qw",
                            "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        ip("addr", "add", "10.77.13.5/24", "dev", "eth0", netns=self.ns("x"))
        ip("addr", "add", "fd77:13::5/64", "dev", "eth0", "nodad", netns=self.ns("x"))
        for name in ("b", "c"):     # a kernel bridge and a veth to the container
            host, container = self.ns(name), self.ns("c" + name)
            ip("link", "add", "name", "br0", "type", "bridge", netns=host)
            ip("link", "set", "br0", "up", netns=host)
            ip("link", "add", "name", "vc", "type", "veth", "peer", "name", "eth0", "netns",
               container, netns=host)
            ip("link", "set", "vc", "master", "br0", "up", netns=host)
            self._container(name, "eth0")
        # Container a's tap: persistent, so an engine can come and go (and the kernel baseline
        # can take it as a bridge port).
        ip("tuntap", "add", "dev", "tap0", "mode", "tap", netns=self.ns("ca"))
        self._container("a", "tap0")

    def _container(self, name: str, ifname: str) -> None:
        container = self.ns("c" + name)
        quiet_ipv6(container)
        ip("link", "set", ifname, "address", self.container_mac(name), "mtu", str(OVERLAY_MTU),
           netns=container)
        ip("addr", "add", f"10.99.0.{HOSTS[name]}/24", "dev", ifname, netns=container)
        ip("link", "set", ifname, "up", netns=container)

    def kernel_vtep(self, name: str, vni: int, family: int, dstport: int,
                    remotes: Sequence[str], *, learning: bool = True,
                    fdb: Sequence[tuple[str, str]] = ()) -> None:  # fmt: skip
        """The kernel's vxlan device ``vx`` on host ``name``, in its bridge: broadcast and unknown
        unicast go to every address of ``remotes`` (all-zero FDB entries), ``fdb`` adds static
        (MAC, VTEP) entries, ``learning`` off is flannel's ``nolearning``."""
        host = self.ns(name)
        self.drop_kernel_vtep(name)
        ip("link", "add", "name", "vx", "type", "vxlan", "id", str(vni), "local",
           underlay_addr(name, family), "dstport", str(dstport),
           *([] if learning else ["nolearning"]), netns=host)
        for remote in remotes:
            bridge("fdb", "append", "00:00:00:00:00:00", "dev", "vx", "dst", remote, netns=host)
        for mac, vtep in fdb:
            bridge("fdb", "append", mac, "dev", "vx", "dst", vtep, "self", "permanent",
                   netns=host)
        ip("link", "set", "vx", "master", "br0", "up", netns=host)

    def drop_kernel_vtep(self, name: str) -> None:
        ip("link", "del", "vx", netns=self.ns(name), check=False)

    def kernel_host_a(self, vni: int, family: int, dstport: int,
                      remotes: Sequence[str]) -> Host:  # fmt: skip
        """Host a as the kernel does it (the baseline): container a reaches a bridge on host a
        through a veth (its tap steps aside), the bridge holds a kernel vxlan device. Returns
        container a on that veth; ``engine_host_a`` undoes it."""
        a, ca = self.ns("a"), self.ns("ca")
        ip("link", "set", "tap0", "down", netns=ca)
        ip("addr", "flush", "dev", "tap0", netns=ca)
        ip("link", "add", "name", "br0", "type", "bridge", netns=a)
        ip("link", "set", "br0", "up", netns=a)
        ip("link", "add", "name", "vc", "type", "veth", "peer", "name", "eth0", "netns", ca,
           netns=a)
        ip("link", "set", "vc", "master", "br0", "up", netns=a)
        self._container("a", "eth0")
        self.kernel_vtep("a", vni, family, dstport, remotes)
        return Host(ca, "eth0", self.host("a").ip, self.host("a").mac)

    def engine_host_a(self) -> None:
        """Undo ``kernel_host_a``: container a on its tap again, host a without a bridge."""
        a = self.ns("a")
        ip("link", "del", "br0", netns=a, check=False)
        ip("link", "del", "vc", netns=a, check=False)
        self.drop_kernel_vtep("a")
        self._container("a", "tap0")

    def neighbors(self, names: Sequence[str]) -> None:
        """Static ARP entries between the containers ``names`` (flannel's way: no ARP on the
        overlay)."""
        for name in names:
            me = self.host(name)
            for other in names:
                if other != name:
                    peer = self.host(other)
                    ip("neigh", "replace", peer.ip, "lladdr", peer.mac, "dev", me.ifname,
                       "nud", "permanent", netns=me.netns)

    def flush_neighbors(self) -> None:
        for name in ("a", "b", "c"):
            me = self.host(name)
            ip("neigh", "flush", "dev", me.ifname, "nud", "all", netns=me.netns, check=False)

    def close(self) -> None:
        for name in reversed(self.made):
            ip("netns", "del", name, check=False)
        self.made.clear()


SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def tx_checksum_off(ifname: str) -> None:
    """Checksums (and with them segmentation) done in software before ``ifname`` sends, as a
    physical NIC would finish them. A veth otherwise hands the next namespace packets whose
    inner checksums are still partial, which only the kernel's own vxlan can take: a UDP socket
    (tapengine's, or any other VTEP in user space) gets their bytes unfinished."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0), 8)
    request = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


def bridge(*args: str, netns: str) -> None:
    argv = ["bridge", "-n", netns, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@contextlib.contextmanager
def built(prefix: str) -> Iterator[Net]:
    net = Net(prefix)
    try:
        net.build()
        yield net
    finally:
        net.close()
