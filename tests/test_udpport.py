"""UDP socket ports (``tapengine.udpport``, ``forward DEVICE --udp``): a flannel-UDP-style tunnel
between two namespaces, checked with the kernel's own sockets, and every bad address refused.

The tunnel: namespaces A and B joined by a veth (the underlay, IPv4 or IPv6). In each, a
``tapengine forward TUN --tun --udp LOCAL --peer REMOTE --netns NS`` carries every IP packet of
its tun as the payload of one datagram to the other engine, which writes it to its own tun. The
overlay (10.78.0.0/24 on the tuns) has no other way between the namespaces, so what the kernel's
TCP and UDP sockets deliver there crossed both engines and the underlay as UDP datagrams. With taps
instead of tuns, the datagrams carry Ethernet frames (ARP included): an L2 tunnel. And the same
through two engines whose sockets live in a third namespace, apart from the hosts' taps.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from fwdnet import Host, in_netns, tcp_transfer
from netutil import wait_until
from tapengine.cli import main
from tapengine.engine import Engine
from tapengine.errors import AddressError, InvalidValueError
from tapengine.tun import Offload
from tapengine.udpport import open_udp_port
from tapengine.validate import check_endpoint, format_endpoint
from test_cli_forward import tcp_is_quiet

MB = 1 << 20
UDP_SEGMENT = 103       # <linux/udp.h>: the socket option of UDP GSO
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IFA_F_NODAD = 0x02
TUN_MTU = 1400
UNDERLAY = {4: ("10.77.0.1", "10.77.0.2", 24), 6: ("fd77::1", "fd77::2", 64)}
OVERLAY = ("10.78.0.1", "10.78.0.2")
PORT = 4789


# -- bad addresses and ports are refused before anything is opened ---------------------------


@pytest.mark.parametrize("text, fragment", [
    ("10.77.0.1", "expected ADDRESS:PORT"),
    ("fd77::1:4789", "IPv6 address goes in brackets"),
    ("[10.77.0.1]:4789", "only an IPv6 address goes in brackets"),
    ("10.77.0.1:65536", "port must be a number from 1 to 65535"),
    ("10.77.0.1:0", "port must be a number from 1 to 65535"),
    ("10.77.0.1:+80", "port must be a number"),
    ("10.77.0.1: 80", "port must be a number"),
    ("localhost:80", "not an IP address (host names are not looked up)"),
    ("[fe80::1%eth0]:80", "scope"),
    ("10.77.0.256:80", "not an IP address"),
    ("", "expected ADDRESS:PORT"),
    (("10.77.0.1", 70000), "expected an integer from 1 to 65535"),
    (("10.77.0.1", True), "expected an integer"),
    (("nowhere", 80), "not an IP address"),
    (4789, "expected ADDRESS:PORT"),
])
def test_a_bad_endpoint_is_refused_naming_it(text: object, fragment: str) -> None:
    with pytest.raises(InvalidValueError, match="invalid peer address") as err:
        check_endpoint(text, "peer address")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_good_endpoints_read_back_as_written() -> None:
    assert check_endpoint("10.77.0.1:4789") == ("10.77.0.1", 4789)
    assert check_endpoint("[FD77:0::1]:80") == ("fd77::1", 80)
    assert check_endpoint(("::1", 1)) == ("::1", 1)
    assert check_endpoint("0.0.0.0:0", allow_zero_port=True) == ("0.0.0.0", 0)
    for endpoint in (("fd77::1", 4789), ("10.77.0.1", 65535)):
        assert check_endpoint(format_endpoint(endpoint)) == endpoint


@pytest.mark.parametrize("text", ["[::ffff:10.77.0.2]:4789", "[::FFFF:0a4d:0002]:4789"])
def test_an_ipv4_mapped_address_keeps_its_ipv4_part_dotted(text: str) -> None:
    """As the kernel prints it (and the same 16 bytes to inet_pton): an error message echoes
    ``[::ffff:10.77.0.2]:4789``, not Python 3.11's ``[::ffff:a4d:2]``."""
    host, port = check_endpoint(text)
    assert format_endpoint((host, port)) == "[::ffff:10.77.0.2]:4789"
    assert socket.inet_pton(socket.AF_INET6, host) == \
        socket.inet_pton(socket.AF_INET6, "::ffff:10.77.0.2")
    assert check_endpoint((host, port)) == (host, port)


@pytest.mark.parametrize("args, kwargs, fragment", [
    (("127.0.0.1:0", "[::1]:4789"), {}, "both be IPv4 or both IPv6"),
    (("127.0.0.1:0", "0.0.0.0:4789"), {}, "unspecified address"),
    (("127.0.0.1:0",), {"name": ""}, "invalid UDP port name"),
    (("127.0.0.1:0",), {"buffer_size": 10}, "socket buffer size"),
    (("127.0.0.1:0",), {"max_payload": 70000}, "largest UDP payload"),
    (("127.0.0.1:0",), {"netns": "a/b"}, "invalid namespace name"),
])
def test_open_udp_port_refuses_bad_values(args: tuple, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        open_udp_port(*args, **kwargs)


def test_an_address_in_use_or_missing_is_an_address_error() -> None:
    with open_udp_port("127.0.0.1:0") as first:
        assert first.local[1] != 0 and first.name == f"udp:127.0.0.1:{first.local[1]}"
        with pytest.raises(AddressError, match="another socket is bound to it"):
            open_udp_port(first.local)
    with pytest.raises(AddressError, match="no interface of the namespace has this address"):
        open_udp_port("192.0.2.1:0")


def test_a_broadcast_peer_is_refused_for_what_it_is() -> None:
    # connect() to a broadcast address fails with EACCES (no SO_BROADCAST): the hint is about
    # the address, not the bind() meaning of EACCES (a privileged port), which 4789 is not.
    with pytest.raises(AddressError, match="a broadcast address cannot be a peer") as refused:
        open_udp_port("127.0.0.1:0", "255.255.255.255:4789")
    assert "CAP_NET_BIND_SERVICE" not in str(refused.value)


def test_a_udp_port_joins_a_wire_with_a_tun_or_tap() -> None:
    # Not a switch, and not a wire of two UDP ports: a received datagram's slot keeps its
    # sender's address, so the other port would send it straight back to its sender.
    with open_udp_port("127.0.0.1:0") as one, open_udp_port("127.0.0.1:0") as two:
        with pytest.raises(ValueError, match="a UDP port joins a wire, not a switch"):
            Engine([one, two], "switch")
        with pytest.raises(ValueError, match="not two UDP ports"):
            Engine([one, two])


@pytest.mark.parametrize("args, code, fragment", [
    (["T", "--udp", "10.77.0.1"], 2, "expected ADDRESS:PORT"),
    (["T", "--udp", "127.0.0.1:0", "--peer", "127.0.0.1:0"], 2, "port must be a number"),
    (["T", "U", "--udp", "127.0.0.1:0"], 1, "with --udp, forward takes one device"),
    (["T"], 1, "forward joins two devices, or one device and --udp"),
    (["T", "U", "--peer", "127.0.0.1:9"], 1, "--peer needs --udp"),
    (["T", "--udp", "127.0.0.1:0", "--peer", "[::1]:9"], 1, "both must be IPv4 or both IPv6"),
    (["T", "--udp", "127.0.0.1:0", "--queues", "2"], 1, "a UDP port serves one worker"),
    (["T", "--udp", "127.0.0.1:0", "--netns", "te-no-such-ns"], 1, "does not exist"),
    (["T", "--vxlan", "1", "--local", "127.0.0.1", "--remote", "127.0.0.2", "--peer",
      "127.0.0.1:9"], 1, "--peer: only with --udp, not with --vxlan"),
    (["T", "--vxlan", "1", "--local", "127.0.0.1", "--remote", "127.0.0.2", "--netns",
      "te-no-such-ns"], 1, "--netns: only with --udp, not with --vxlan"),
])
def test_forward_refuses_a_bad_udp_invocation_with_one_line(
        capsys: pytest.CaptureFixture[str], args: list[str], code: int, fragment: str) -> None:
    # Each is refused before any device is opened: the devices named here are never created.
    try:
        result = main(["forward", *args])
    except SystemExit as exit_:     # argparse: a usage error
        result = exit_.code
    out, err = capsys.readouterr()
    assert result == code and out == ""
    assert fragment in err and len(err.strip().splitlines()) == 1, err


# -- one engine: tun <-> UDP port, against the kernel's sockets ------------------------------


def loopback_netns(make_netns: Callable[[str], str], suffix: str) -> str:
    """A namespace of the test's, its loopback up."""
    netns = make_netns(suffix)
    with IPRoute(netns=netns) as ipr:
        ipr.link("set", index=1, state="up")
    return netns


def loopback_sockets(netns: str, count: int) -> list[socket.socket]:
    """``count`` UDP sockets inside ``netns``, bound to its loopback, blocking up to 30 s."""
    found = []
    for _ in range(count):
        sock = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(30)
        found.append(sock)
    return found


def address_up(netns: str, ifname: str, address: str, *, mtu: int | None = None) -> None:
    """Give ``ifname`` (inside ``netns``) ``address``/24 (and ``mtu``) and bring it up."""
    with IPRoute(netns=netns) as ipr:
        (index,) = ipr.link_lookup(ifname=ifname)
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        ipr.addr("add", index=index, address=address, prefixlen=24)
        ipr.link("set", index=index, state="up")


def icmp_port_unreachable(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """The ICMP error a host sends back when a datagram from ``local`` finds no socket at
    ``remote``: type 3 code 3, quoting the datagram's IPv4 and UDP headers."""
    from scapy.layers.inet import ICMP, IP, UDP

    quoted = IP(src=local[0], dst=remote[0]) / UDP(sport=local[1], dport=remote[1])
    return bytes(ICMP(type=3, code=3) / bytes(quoted)[:28])


def test_a_udp_port_carries_both_ways_and_outlives_icmp_errors(
        make_netns: Callable[[str], str]) -> None:
    """A tun and a UDP port connected to a plain socket (the far end of a tunnel). An ICMP port
    unreachable for the port's socket (its peer restarting), arriving while the worker sleeps,
    is counted as a receive error, and the port keeps forwarding both ways. A datagram longer
    than the port takes is dropped whole and counted as ``truncated``."""
    from scapy.layers.inet import IP, UDP

    from tapengine.engine import open_port
    from tapengine.netns import run_in_netns

    netns = loopback_netns(make_netns, "i")
    (far,) = loopback_sockets(netns, 1)
    inner = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    raw = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with far, inner, raw:
        tun = run_in_netns(netns, open_port, "tun0", mode="tun", offload=False)
        udp = open_udp_port("127.0.0.1:0", far.getsockname(), netns=netns, max_payload=512)
        with tun, udp, Engine([tun, udp]) as engine:
            address_up(netns, "tun0", "10.78.0.1")
            inner.bind(("10.78.0.1", 0))
            inner.settimeout(30)

            def errors() -> int:
                return engine.stats().port(udp.name).counters["rx_errors"]

            wait_until(lambda: engine.worker_states()[0]["sleeps"] > 0, 30,
                       "the worker to sleep in epoll_wait")
            raw.sendto(icmp_port_unreachable(udp.local, far.getsockname()), ("127.0.0.1", 0))
            wait_until(lambda: errors() == 1, 30, "the ICMP error to reach the UDP port")
            assert engine.events() == [] and engine.stats().port(udp.name).up
            for k, size in enumerate((0, 600, 0)):
                # tun -> datagram: the IP packet the kernel routed to tun0, whole
                inner.sendto(b"out %d" % k, ("10.78.0.2", 7))
                while not (packet := far.recv(2048)).endswith(b"out %d" % k):
                    pass            # (the kernel's own packets on tun0 may come first)
                sent = IP(packet)
                assert (sent.src, sent.dst, sent[UDP].dport) == ("10.78.0.1", "10.78.0.2", 7)
                # datagram -> tun: an IP packet as payload reaches the kernel's socket
                back = IP(src="10.78.0.2", dst="10.78.0.1") / UDP(
                    sport=7, dport=inner.getsockname()[1]) / (b"x" * size + b"back %d" % k)
                far.sendto(bytes(back), udp.local)
                if size:        # over max_payload: never written to the tun, counted
                    wait_until(lambda: engine.stats().port(udp.name).drops == {"truncated": 1},
                               30, "the datagram over max_payload to be counted")
                else:
                    assert inner.recvfrom(2048) == (b"back %d" % k, ("10.78.0.2", 7))
            assert errors() == 1 and engine.stats().port(udp.name).up
            assert (f"{udp.name}: UDP, local {format_endpoint(udp.local)}, remote "
                    f"{format_endpoint(far.getsockname())}") in engine.stats().format()


def test_an_unconnected_udp_port_takes_anyone_and_sends_where_a_stage_says(
        make_netns: Callable[[str], str]) -> None:
    """Without a remote address the port takes datagrams from any sender; a packet of the tun
    leaves only with a peer address, which a stage sets from the batch's ``peers`` view. With
    none the send is refused by the kernel and counted as a transmit error, never sent."""
    import errno

    import numpy as np
    from scapy.layers.inet import IP, UDP

    from tapengine.engine import open_port
    from tapengine.netns import run_in_netns

    netns = loopback_netns(make_netns, "s")
    far, stranger = loopback_sockets(netns, 2)
    inner = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    address = {"on": False}

    def to_far(batch: Any) -> None:      # packets from the tun go to the far socket, if asked
        if batch.port_name == "tun0" and address["on"]:
            peers = batch.peers
            peers["family"] = socket.AF_INET
            peers["port"] = far.getsockname()[1]
            peers["addr4"] = np.frombuffer(socket.inet_aton("127.0.0.1"), np.uint8)

    with far, stranger, inner:
        tun = run_in_netns(netns, open_port, "tun0", mode="tun", offload=False)
        udp = open_udp_port("127.0.0.1:0", netns=netns)
        assert udp.remote is None and udp.addresses()["remote"] is None
        with tun, udp, Engine([tun, udp], stages=[to_far]) as engine:
            in_netns(netns, _no_ipv6, "tun0")        # the tun sends nothing of its own
            address_up(netns, "tun0", "10.78.0.1")
            inner.bind(("10.78.0.1", 0))
            inner.settimeout(30)
            # Anyone's datagram reaches the tun.
            for k, sender in enumerate((far, stranger)):
                back = IP(src="10.78.0.2", dst="10.78.0.1") / UDP(
                    sport=7, dport=inner.getsockname()[1]) / (b"in %d" % k)
                sender.sendto(bytes(back), udp.local)
                assert inner.recvfrom(2048) == (b"in %d" % k, ("10.78.0.2", 7))

            def port() -> Any:
                return engine.stats().port(udp.name)

            # No address: refused by the kernel (EDESTADDRREQ), counted, nothing sent.
            inner.sendto(b"nowhere", ("10.78.0.2", 7))
            wait_until(lambda: port().drops.get("tx_error", 0) == 1, 30,
                       "the packet without an address to be counted")
            assert port().counters["last_errno"] == errno.EDESTADDRREQ
            assert port().tx_packets == 0
            # The stage gives every packet of the tun the far socket's address.
            address["on"] = True
            inner.sendto(b"out", ("10.78.0.2", 7))
            assert far.recv(2048).endswith(b"out")
            # the worker counts a send once sendmmsg returns, which may be after far has it
            wait_until(lambda: port().tx_packets >= 1, 30, "the datagram sent to be counted")
            assert port().tx_packets == 1 and port().drops == {"tx_error": 1}


def test_two_engines_in_a_third_namespace_join_the_taps_of_two_others(
        make_netns: Callable[[str], str], prefix: str) -> None:
    """Hosts A and B each hold a tap; both engines run here, their UDP sockets in namespace E
    (over its loopback): the tap and the socket of one port live in different namespaces."""
    from tapengine.engine import open_port

    engines_ns = loopback_netns(make_netns, "e")
    hosts = [Host(make_netns(name), prefix + name, OVERLAY[k])
             for k, name in enumerate(("ha", "hb"))]
    # Each engine's tap: made here (its fd keeps working once the link moves), then moved.
    taps = [open_port(host.ifname, offload=False, txqueuelen=0) for host in hosts]
    ends = [("127.0.0.1", PORT), ("127.0.0.1", PORT + 1)]    # E's own loopback: ports are free
    udps = [open_udp_port(ends[k], ends[1 - k], netns=engines_ns) for k in range(2)]
    with taps[0], taps[1], udps[0], udps[1], Engine([taps[0], udps[0]]), \
            Engine([taps[1], udps[1]]):
        for host in hosts:
            with IPRoute() as ipr:
                (index,) = ipr.link_lookup(ifname=host.ifname)
                ipr.link("set", index=index, net_ns_fd=host.netns)
            in_netns(host.netns, _no_ipv6, host.ifname)
            address_up(host.netns, host.ifname, host.ip)
        for src, dst in ((hosts[0], hosts[1]), (hosts[1], hosts[0])):
            sent, received = udp_exchange(src, dst, 64)
            assert received == sent


def test_the_learn_peer_example_sends_the_tun_to_the_last_sender(
        make_netns: Callable[[str], str]) -> None:
    """examples/stages/learn_peer.py on an unconnected port: the tun's packets are dropped (by
    the stage, counted) until a datagram arrives, then go to its sender, and follow a sender
    that moves to another address."""
    from scapy.layers.inet import IP, UDP

    from tapengine.engine import open_port
    from tapengine.netns import run_in_netns
    from tapengine.stages import load_stage

    stage = load_stage(f"{EXAMPLES}/stages/learn_peer.py:stage")
    netns = loopback_netns(make_netns, "l")
    first, second = loopback_sockets(netns, 2)
    inner = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    with inner, first, second:
        tun = run_in_netns(netns, open_port, "tun0", mode="tun", offload=False)
        udp = open_udp_port("127.0.0.1:0", netns=netns)
        with tun, udp, Engine([tun, udp], stages=[stage]) as engine:
            in_netns(netns, _no_ipv6, "tun0")        # the tun sends nothing of its own
            address_up(netns, "tun0", "10.78.0.1")
            inner.bind(("10.78.0.1", 0))
            inner.settimeout(30)
            inner.sendto(b"too early", ("10.78.0.2", 7))
            wait_until(lambda: engine.stats().stages[0].dropped == 1, 30,
                       "the stage to drop the packet that has nowhere to go")
            for k, sender in enumerate((first, second)):
                hello = IP(src="10.78.0.2", dst="10.78.0.1") / UDP(
                    sport=7, dport=inner.getsockname()[1]) / (b"from %d" % k)
                sender.sendto(bytes(hello), udp.local)
                assert inner.recvfrom(2048) == (b"from %d" % k, ("10.78.0.2", 7))
                inner.sendto(b"to %d" % k, ("10.78.0.2", 7))
                assert sender.recv(2048).endswith(b"to %d" % k)
            first.setblocking(False)
            with pytest.raises(BlockingIOError):     # nothing went to the old address
                first.recv(2048)
            assert engine.stats().stages[0].dropped == 1


def test_segments_of_a_superframe_keep_the_address_a_stage_gave_it(
        make_netns: Callable[[str], str]) -> None:
    """A tun with offloads hands over one UDP GSO superframe (a socket's UDP_SEGMENT send); the
    engine segments it in software for the UDP port, and every segment goes where the stage
    (examples/stages/learn_peer.py) addressed the superframe: none is refused for lack of one."""
    from scapy.layers.inet import IP, UDP

    from tapengine.engine import open_port
    from tapengine.netns import run_in_netns
    from tapengine.stages import load_stage

    netns = loopback_netns(make_netns, "g")
    (far,) = loopback_sockets(netns, 1)
    inner = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    with far, inner:
        tun = run_in_netns(netns, open_port, "tun0", mode="tun")
        if not tun.offload & Offload.USO4:
            pytest.skip("this kernel's tun does not take UDP segmentation offload (USO4)")
        udp = open_udp_port("127.0.0.1:0", netns=netns)
        stage = load_stage(f"{EXAMPLES}/stages/learn_peer.py:stage")
        with tun, udp, Engine([tun, udp], stages=[stage]) as engine:
            in_netns(netns, _no_ipv6, "tun0")
            address_up(netns, "tun0", "10.78.0.1")
            inner.bind(("10.78.0.1", 0))
            inner.settimeout(30)
            hello = IP(src="10.78.0.2", dst="10.78.0.1") / UDP(
                sport=7, dport=inner.getsockname()[1]) / b"hello"
            far.sendto(bytes(hello), udp.local)          # the stage learns far's address
            assert inner.recv(2048) == b"hello"
            inner.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1000)
            payload = os.urandom(3000)
            inner.sendto(payload, ("10.78.0.2", 7))      # one superframe of three segments
            got = b"".join(bytes(IP(far.recv(2048))[UDP].payload) for _ in range(3))
            assert got == payload
            # the worker counts the sends once sendmmsg returns, which may be after far has them
            wait_until(lambda: engine.stats().port(udp.name).tx_packets >= 3, 30,
                       "the three segments sent to be counted")
            port = engine.stats().port(udp.name)
            assert port.segmented == 1 and port.tx_packets == 3 and port.drops == {}


def test_forward_netns_opens_the_devices_inside_the_namespace(
        make_netns: Callable[[str], str], prefix: str) -> None:
    """``--netns`` without ``--udp``: both taps are made inside the namespace, never here, and
    vanish with the engine."""
    netns = make_netns("n")
    names = [prefix + "x", prefix + "y"]
    proc = subprocess.Popen([sys.executable, "-m", "tapengine", "forward", *names, "--netns",
                             netns], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"forwarding {names[0]} <-> {names[1]}:")
        with IPRoute(netns=netns) as ipr:
            assert all(ipr.link_lookup(ifname=name) for name in names)
        with IPRoute() as ipr:
            assert not any(ipr.link_lookup(ifname=name) for name in names)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err

        def gone() -> bool:
            with IPRoute(netns=netns) as ipr:
                return not any(ipr.link_lookup(ifname=name) for name in names)

        wait_until(gone, 30, "the engine's taps to vanish with it")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- the tunnel ------------------------------------------------------------------------------


@dataclass
class Side:
    netns: str
    tun: str
    underlay: str       # this side's underlay address
    overlay: Host       # the tun, addressed in the overlay
    proc: subprocess.Popen[str] | None = None
    ready: str = ""


def _address(ipr: IPRoute, index: int, address: str, prefixlen: int) -> None:
    ipr.addr("add", index=index, address=address, prefixlen=prefixlen,
             **({"flags": IFA_F_NODAD} if ":" in address else {}))  # fmt: skip


def build_underlay(a: str, b: str, prefix: str, family: int) -> None:
    """A veth between namespaces ``a`` and ``b``, addressed from ``UNDERLAY[family]``, up."""
    addr_a, addr_b, prefixlen = UNDERLAY[family]
    with IPRoute(netns=a) as ipr:
        ipr.link("add", ifname=prefix + "ua", kind="veth", peer=prefix + "ub")
        (peer,) = ipr.link_lookup(ifname=prefix + "ub")
        ipr.link("set", index=peer, net_ns_fd=b)
        (index,) = ipr.link_lookup(ifname=prefix + "ua")
        _address(ipr, index, addr_a, prefixlen)
        ipr.link("set", index=index, state="up")
    with IPRoute(netns=b) as ipr:
        (index,) = ipr.link_lookup(ifname=prefix + "ub")
        _address(ipr, index, addr_b, prefixlen)
        ipr.link("set", index=index, state="up")


def start_engine(side: Side, peer: str, *options: str) -> None:
    local, remote = (format_endpoint((address, PORT)) for address in (side.underlay, peer))
    side.proc = subprocess.Popen(
        [sys.executable, "-m", "tapengine", "forward", side.tun, "--udp", local,
         "--peer", remote, "--netns", side.netns, "--json", "--stats-interval", "0.2",
         *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert side.proc.stdout is not None
    ready, _, _ = select.select([side.proc.stdout], [], [], 60)
    if not ready:
        side.proc.kill()
        pytest.fail(f"no ready line within 60 s: {side.proc.communicate()[1]}")
    side.ready = side.proc.stdout.readline()


def _no_ipv6(name: str) -> None:
    with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as file:
        file.write("1")


def bring_up_tun(side: Side) -> None:
    """The engine made the tun (or tap) inside the namespace; address it in the overlay (IPv4
    only: no router solicitations of its own) and bring it up."""
    in_netns(side.netns, _no_ipv6, side.tun)
    address_up(side.netns, side.tun, side.overlay.ip, mtu=TUN_MTU)


@pytest.fixture
def tunnel(make_netns: Callable[[str], str], prefix: str,
           request: pytest.FixtureRequest) -> Iterator[tuple[Side, Side]]:  # fmt: skip
    family, *options = request.param
    a, b = make_netns("a"), make_netns("b")
    build_underlay(a, b, prefix, family)
    addr_a, addr_b, _ = UNDERLAY[family]
    sides = (Side(a, prefix + "ta", addr_a, Host(a, prefix + "ta", OVERLAY[0])),
             Side(b, prefix + "tb", addr_b, Host(b, prefix + "tb", OVERLAY[1])))
    try:
        start_engine(sides[0], addr_b, *options)
        start_engine(sides[1], addr_a, *options)
        for side in sides:
            bring_up_tun(side)
        yield sides
    finally:
        for side in sides:
            if side.proc is not None and side.proc.poll() is None:
                side.proc.kill()
                side.proc.communicate()


def udp_exchange(src: Host, dst: Host, count: int, window: int = 32) -> tuple[str, str]:
    """``count`` datagrams of random sizes (up to what the tun's MTU carries) from ``src`` to
    ``dst`` over the overlay, ``window`` at a time, each window waited for before the next (so
    no queue on the way can overflow); the SHA-256 of the payloads sent and of those received,
    in the order of the index each starts with (UDP may reorder: on a tap, datagrams queued
    while ARP resolves can be overtaken by the next ones; loss, duplicates and damage show)."""
    receiver = in_netns(dst.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sender = in_netns(src.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sent = hashlib.sha256()
    received: list[bytes] = []
    with receiver, sender:
        receiver.bind((dst.ip, 0))
        receiver.setblocking(False)
        target = (dst.ip, receiver.getsockname()[1])
        got = 0
        for first in range(0, count, window):
            batch = range(first, min(first + window, count))
            for k in batch:
                payload = k.to_bytes(4, "big") + os.urandom(int.from_bytes(os.urandom(2)) %
                                                            (TUN_MTU - 28 - 4 + 1))
                sender.sendto(payload, target)
                sent.update(payload)

            def drained(goal: int = batch.stop) -> bool:
                nonlocal got
                while got < goal:
                    try:
                        received.append(receiver.recv(65536))
                    except BlockingIOError:
                        return False
                    got += 1
                return True

            wait_until(drained, 30, f"datagrams {batch.start}..{batch.stop - 1} to arrive")
    return sent.hexdigest(), hashlib.sha256(b"".join(sorted(received))).hexdigest()


def stop_engine(side: Side) -> dict:
    assert side.proc is not None
    side.proc.send_signal(signal.SIGTERM)
    out, err = side.proc.communicate(timeout=60)
    assert side.proc.returncode == 0, err
    assert "stopped by SIGTERM" in err
    local = format_endpoint((side.underlay, PORT))
    assert f"udp:{local} rx " in err and " pps " in err     # live rates name the UDP port
    return json.loads(out)


@pytest.mark.parametrize("tunnel", [(4, "--tun"), (6, "--tun", "--no-offload"), (4,)],
                         indirect=True, ids=["tun-ipv4-underlay",
                                             "tun-ipv6-underlay-no-offload",
                                             "tap-ipv4-underlay"])  # fmt: skip
def test_two_namespaces_exchange_tcp_and_udp_through_a_udp_tunnel(
        tunnel: tuple[Side, Side]) -> None:
    a, b = tunnel
    for side, peer in ((a, b), (b, a)):
        local = format_endpoint((side.underlay, PORT))
        assert side.ready.startswith(f"forwarding {side.tun} <-> udp:{local} (peer "
                                     f"{format_endpoint((peer.underlay, PORT))})"), side.ready
    for src, dst in ((a, b), (b, a)):
        sent, received = udp_exchange(src.overlay, dst.overlay, 256)
        assert received == sent
        sent, received, nbytes = tcp_transfer(src.overlay, dst.overlay, 8 * MB)
        assert (received, nbytes) == (sent, 8 * MB)
    wait_until(lambda: tcp_is_quiet(a.netns) and tcp_is_quiet(b.netns), 60,
               "the transfers' connections to finish closing")
    final = {side.netns: stop_engine(side) for side in (a, b)}
    for side, peer in ((a, b), (b, a)):
        tun, udp = final[side.netns]["ports"]
        assert tun["ifname"] == side.tun and "udp" not in tun
        assert udp["udp"] == {"local": format_endpoint((side.underlay, PORT)),
                              "remote": format_endpoint((peer.underlay, PORT)),
                              "netns": side.netns}
        # Every datagram one engine sent, the other received: nothing lost on the underlay,
        # and nothing else reached the connected sockets.
        other = final[peer.netns]["ports"][1]
        assert udp["stats64"]["tx"]["packets"] == other["stats64"]["rx"]["packets"] > 256
        assert udp["stats64"]["rx"]["dropped"] == udp["stats64"]["tx"]["dropped"] == 0
        # With offloads the tun hands over TCP superframes: segmented in software, each segment
        # one datagram (no bigger than the tun's MTU).
        assert (udp["segmented"] > 0) == ("offload off" not in side.ready), (udp, side.ready)
    # The engines' tuns went with them.
    for side in (a, b):
        with IPRoute(netns=side.netns) as ipr:
            assert not ipr.link_lookup(ifname=side.tun)
