"""VXLAN ports (tapengine.vxlan, pyx/vxlan.pyx) against the Linux kernel's own vxlan devices.

Every test runs in one set of namespaces made once for the module (tests/vxlannet.py): host a
runs tapengine for container a's tap, hosts b and c are pure kernel (vxlan device, bridge, veth
to their container), host x sends raw datagrams. The kernel is the independent side: its vxlan
device decapsulates what we send (a wrong header, VNI or checksum would be dropped there), its
TCP stack checks what crosses, its counters say where frames went.
"""

from __future__ import annotations

import json
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from conftest import _privilege_problem, _require, leftovers, unique_prefix
from fwdnet import Host, in_netns, kernel_stats, ping, tcp_transfer
from netutil import wait_until
from tapengine.engine import Engine, open_port
from tapengine.errors import InvalidValueError
from tapengine.netns import inside_netns
from tapengine.nsexec import nsexec_argv
from tapengine.vxlan import VxlanPort, open_vxlan_port
from vxlannet import Net, built, ip, underlay_addr

VNI = 4242
MB = 1 << 20


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    _require(_privilege_problem())
    prefix = unique_prefix()
    try:
        with built(prefix) as made:
            yield made
    finally:
        deadline = time.monotonic() + 30.0
        while leftovers(prefix) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leftovers(prefix)


def vtep_device(net: Net, name: str) -> Host:
    return Host(net.ns(name), "vx", "")


def start_cli(net: Net, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``tapengine ARGS`` inside container a's namespace (its tap is there), its ready line."""
    proc = subprocess.Popen(nsexec_argv(net.ns("ca"), [sys.executable, "-m", "tapengine", *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    if not ready:
        proc.kill()
        pytest.fail(f"no ready line: {proc.communicate()[1]}")
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"tapengine exited with {proc.wait()}: {proc.communicate()[1]}")
    return proc, line


def stop_cli(proc: subprocess.Popen[str]) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def transfer_both_ways(a: Host, b: Host) -> None:
    for src, dst in ((a, b), (b, a)):
        sent, received, count = tcp_transfer(src, dst, 2 * MB, timeout=60)
        assert (received, count) == (sent, 2 * MB)


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """The ``A$ tapengine ...`` commands of the README's "Across hosts" section, as argv."""
    section = README[README.index("### Across hosts"):]
    section = section[:section.index("\n### ")]
    return [shlex.split(line[3:]) for line in section.splitlines()
            if line.startswith("A$ tapengine ")]


def test_the_readme_says_a_kernel_vtep_on_a_veth_needs_tx_checksums_off() -> None:
    # What tx_checksum_off (tests/vxlannet.py) does for every interop test, a user trying the
    # README between namespaces must do too, or TCP fails while ping works.
    section = README[README.index("### Across hosts"):]
    section = section[:section.index("\n### ")]
    assert "ethtool -K DEV tx off" in section and "TcpInCsumErrors" in section


INTEROP = [     # underlay family, VXLAN port, learning; the IPv4 ones run the README's commands
    pytest.param(4, 4789, True, id="ipv4-4789-learning-readme"),
    pytest.param(6, 8472, True, id="ipv6-8472-learning"),
    pytest.param(4, 8472, False, id="ipv4-8472-nolearning-static-fdb-readme"),
    pytest.param(6, 4789, False, id="ipv6-4789-nolearning-static-fdb"),
]


@pytest.mark.parametrize(("family", "dstport", "learning"), INTEROP)
def test_interop_with_kernel_vxlan(net: Net, family: int, dstport: int, learning: bool) -> None:
    """Ping and digest-checked TCP both ways between container a (tapengine switch) and
    container b (a kernel vxlan device and bridge): learning with a remote each side, or
    flannel's way (nolearning, a static FDB entry per remote MAC, static ARP, no remote)."""
    a_addr, b_addr = underlay_addr("a", family), underlay_addr("b", family)
    a, b = net.host("a"), net.host("b")
    peers = ["--remote", b_addr] if learning else ["--fdb", f"{b.mac}={b_addr}"]
    argv = ["tapengine", "switch", "tap0", "--vxlan", str(VNI), "--local", a_addr, *peers,
            *(["--dstport", str(dstport)] if dstport != 4789 else [])]
    if family == 4:
        argv = readme_commands()[0 if learning else 1]
    vni = int(argv[argv.index("--vxlan") + 1])
    assert argv[argv.index("--local") + 1] == a_addr
    if learning:
        net.kernel_vtep("b", vni, family, dstport, [a_addr])
        net.flush_neighbors()
    else:
        net.kernel_vtep("b", vni, family, dstport, [], learning=False, fdb=[(a.mac, a_addr)])
        net.neighbors(["a", "b"])
    proc, line = start_cli(net, *argv[1:], "--underlay-netns", net.ns("a"), "--json")
    try:
        assert line.startswith(f"switching tap0, vxlan{vni} (VNI {vni}"), line
        result = ping(a, b)
        assert result.returncode == 0, result.stdout + result.stderr
        transfer_both_ways(a, b)
    finally:
        stats = stop_cli(proc)
        net.drop_kernel_vtep("b")
        net.flush_neighbors()
    (vxlan,) = [port["vxlan"] for port in stats["ports"] if "vxlan" in port]
    assert vxlan["drops"] == {}
    counters = vxlan["counters"]
    assert counters["rx_datagrams"] > 2 * MB // 1500
    # runs of segments became superframes for the tap, and superframes of the tap GSO sends
    assert vxlan["features"] == {"gso": "on", "coalesce": "on"}
    assert counters["superframes"] > 0 and counters["coalesced"] > counters["superframes"]
    assert counters["gso_sends"] > 0
    assert vxlan["dstport"] == dstport
    fdb = {entry["mac"]: entry for entry in vxlan["fdb"]}
    assert fdb[b.mac]["vtep"] == b_addr
    assert fdb[b.mac]["static"] is (not learning)
    if not learning:
        assert counters["flooded"] == 0     # nothing unknown: no remote to flood to


@pytest.fixture
def engine_a(net: Net) -> Iterator[Callable[..., tuple[Engine, VxlanPort]]]:
    """``engine_a(remotes, family=4)``: an in-process Engine on host a (tap0 of container a and a
    VXLAN port bound in host a), stopped at teardown."""
    made: list[tuple[Engine, list[Any]]] = []

    def start(remotes: list[str], family: int = 4, **options: Any) -> tuple[Engine, VxlanPort]:
        with inside_netns(net.ns("ca")):
            tap = open_port("tap0")
        vxlan = open_vxlan_port(VNI, underlay_addr("a", family), remotes, netns=net.ns("a"),
                                **options)
        engine = Engine([tap, vxlan], "switch")
        made.append((engine, [tap, vxlan]))
        engine.start()
        return engine, vxlan

    yield start
    for engine, ports in made:
        engine.close()
        for port in ports:
            port.close()


def udp_socket(netns: str, bind: tuple[str, int], family: int = socket.AF_INET) -> socket.socket:
    sock = in_netns(netns, socket.socket, family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(bind)
    sock.settimeout(10)
    return sock


def test_three_hosts_replication_unicast_and_a_moving_mac(net: Net, engine_a) -> None:
    """A (tapengine) with remotes B and C (kernel): a broadcast reaches both containers (head-end
    replication); unicast to b's MAC goes to B only (C's vxlan device counts nothing); when b's
    MAC shows up behind C, the port learns it there and sends it there."""
    addr = {name: underlay_addr(name, 4) for name in "abc"}
    net.kernel_vtep("b", VNI, 4, 4789, [addr["a"], addr["c"]])
    net.kernel_vtep("c", VNI, 4, 4789, [addr["a"], addr["b"]])
    a, b, c = net.host("a"), net.host("b"), net.host("c")
    _engine, vxlan = engine_a([addr["b"], addr["c"]])
    sender = udp_socket(a.netns, (a.ip, 0))
    at_b, at_c = udp_socket(b.netns, ("", 47100)), udp_socket(c.netns, ("", 47100))
    try:
        sender.sendto(b"to everyone", ("10.99.0.255", 47100))
        assert at_b.recvfrom(100)[0] == at_c.recvfrom(100)[0] == b"to everyone"
        assert vxlan.counters()["flooded"] >= 1

        # ARP for b resolved (and b learned) by the first datagram; then only B sees the rest.
        sender.sendto(b"hello b", (b.ip, 47100))
        assert at_b.recvfrom(100)[0] == b"hello b"
        wait_until(lambda: vxlan.io.lookup_mac(b.mac) == 0, 10, "b's MAC learned behind B")
        c_before = kernel_stats(vtep_device(net, "c"))["rx_packets"]
        for k in range(20):
            sender.sendto(b"only b %d" % k, (b.ip, 47100))
        for _ in range(20):
            at_b.recvfrom(100)
        assert kernel_stats(vtep_device(net, "c"))["rx_packets"] == c_before

        # b's MAC (and address) move to container c: its first frame from there re-teaches us.
        ip("link", "set", "eth0", "down", netns=b.netns)
        ip("link", "set", "eth0", "down", netns=c.netns)
        ip("link", "set", "eth0", "address", b.mac, netns=c.netns)
        ip("addr", "add", f"{b.ip}/24", "dev", "eth0", netns=c.netns)
        ip("link", "set", "eth0", "up", netns=c.netns)
        moved = udp_socket(c.netns, (b.ip, 47101))
        with moved:
            moved.sendto(b"b is at c now", (a.ip, 47102))   # ARP request from c: learned there
            wait_until(lambda: vxlan.io.lookup_mac(b.mac) == 1, 10, "b's MAC re-learned at C")
            assert vxlan.counters()["moved"] >= 1
            sender.sendto(b"found you", (b.ip, 47101))
            assert moved.recvfrom(100)[0] == b"found you"
    finally:
        for sock in (sender, at_b, at_c):
            sock.close()
        ip("addr", "del", f"{b.ip}/24", "dev", "eth0", netns=c.netns, check=False)
        ip("link", "set", "eth0", "address", c.mac, netns=c.netns)
        ip("link", "set", "eth0", "up", netns=b.netns)
        net.drop_kernel_vtep("b")
        net.drop_kernel_vtep("c")
        net.flush_neighbors()


def vxlan_datagram(flags: int = 0x08, vni: int = VNI, reserved: bytes = b"\0\0\0",
                   last: int = 0, frame: bytes | None = None, src_mac: str = "02:aa:00:00:00:01"
                   ) -> bytes:  # fmt: skip
    """A VXLAN datagram with a broadcast ARP-less frame (an unused ethertype) inside."""
    if frame is None:
        frame = b"\xff" * 6 + bytes.fromhex(src_mac.replace(":", "")) + b"\x88\xb5" + b"x" * 46
    return bytes([flags]) + reserved + vni.to_bytes(3, "big") + bytes([last]) + frame


def test_spoofed_and_malformed_datagrams_are_dropped_and_counted(net: Net, engine_a) -> None:
    """From a configured remote (x at .4): a wrong VNI, no I flag, reserved bits, a truncated
    header and a runt inner frame are each dropped and counted by reason; from a non-peer (x at
    .5) even a valid datagram is dropped as unknown_vtep and its MAC is never learned, so a frame
    toward that MAC is flooded to the configured remote only, never to the spoofer."""
    x4, x5 = underlay_addr("x", 4), underlay_addr("x", 4, 5)
    _engine, vxlan = engine_a([x4])
    x = net.ns("x")
    peer = udp_socket(x, (x4, 4789))
    spoofer = udp_socket(x, (x5, 4789))
    spoofer.setblocking(False)
    a_addr = (underlay_addr("a", 4), 4789)
    try:
        cases = {
            "wrong_vni": vxlan_datagram(vni=VNI + 1),
            "no_vni_flag": vxlan_datagram(flags=0x00),
            "reserved": vxlan_datagram(reserved=b"\0\x01\0"),
            "short_header": b"\x08\0\0\0",
            "short_frame": vxlan_datagram(frame=b"\xff" * 10),
        }
        for datagram in cases.values():
            peer.sendto(datagram, a_addr)
        reserved_last = vxlan_datagram(last=1)
        peer.sendto(reserved_last, a_addr)
        spoofer.sendto(vxlan_datagram(src_mac="02:bb:00:00:00:05"), a_addr)
        peer.sendto(vxlan_datagram(src_mac="02:aa:00:00:00:04"), a_addr)   # the one valid
        def judged(counters: dict[str, int]) -> int:
            """Datagrams read and classified: the port counts rx_datagrams as recvmmsg returns
            and each one's drop reason or frame after it."""
            return counters["rx_frames"] + sum(n for name, n in counters.items()
                                               if name.startswith("drop_"))  # fmt: skip

        wait_until(lambda: judged(vxlan.counters()) >= 8, 10, "8 datagrams read and judged")
        counters = vxlan.counters()
        assert counters["rx_datagrams"] == 8
        drops = {name[5:]: n for name, n in counters.items() if name.startswith("drop_") and n}
        assert drops == {**{reason: 1 for reason in cases}, "reserved": 2, "unknown_vtep": 1}
        assert counters["rx_frames"] == 1
        assert vxlan.io.lookup_mac("02:aa:00:00:00:04") == 0
        assert vxlan.io.lookup_mac("02:bb:00:00:00:05") == -1

        # Toward the spoofer's MAC: unknown, so flooded to the remote (x at .4), never to .5.
        a = net.host("a")
        ip("neigh", "replace", "10.99.0.77", "lladdr", "02:bb:00:00:00:05", "dev", "tap0",
           "nud", "permanent", netns=a.netns)
        sender = udp_socket(a.netns, (a.ip, 0))
        with sender:
            sender.sendto(b"for the spoofer?", ("10.99.0.77", 47200))
            datagram, _ = peer.recvfrom(2000)
        assert datagram[:8] == bytes.fromhex("08000000") + VNI.to_bytes(3, "big") + b"\0"
        assert datagram.endswith(b"for the spoofer?")
        with pytest.raises(BlockingIOError):
            spoofer.recvfrom(2000)
    finally:
        peer.close()
        spoofer.close()
        net.flush_neighbors()


def test_source_ports_spread_flows_checksum_zero_and_df(net: Net, engine_a) -> None:
    """Datagrams of different inner flows leave from different UDP source ports in
    49152-65535, one flow always from the same one; over IPv4 with checksum 0 and DF set (read
    from the wire with a packet socket on host x)."""
    x4 = underlay_addr("x", 4)
    _engine, vxlan = engine_a([x4])
    x, a = net.ns("x"), net.host("a")
    peer = udp_socket(x, (x4, 4789))
    raw = in_netns(x, socket.socket, socket.AF_PACKET, socket.SOCK_DGRAM,
                   socket.htons(0x0800))  # IPv4 packets, network header first
    raw.bind(("eth0", 0x0800))
    raw.settimeout(10)
    ip("neigh", "replace", "10.99.0.77", "lladdr", "02:cc:00:00:00:77", "dev", "tap0", "nud",
       "permanent", netns=a.netns)
    senders = [udp_socket(a.netns, (a.ip, 40000 + k)) for k in range(16)]
    try:
        ports: dict[int, set[int]] = {}
        for _ in range(2):
            for k, sender in enumerate(senders):
                sender.sendto(b"flow %d" % k, ("10.99.0.77", 47300))
                datagram, (_, sport) = peer.recvfrom(2000)
                assert datagram.endswith(b"flow %d" % k)
                ports.setdefault(k, set()).add(sport)
        assert all(len(seen) == 1 for seen in ports.values()), ports    # one flow, one port
        used = set().union(*ports.values())
        assert len(used) >= 4, used
        assert all(49152 <= port <= 65535 for port in used)
        assert used <= set(vxlan.io.source_ports())
        while True:     # a datagram from a to x's VXLAN port, as the wire carries it
            packet = raw.recv(4000)
            ihl = (packet[0] & 0xF) * 4
            if packet[9] == 17 and packet[ihl + 2:ihl + 4] == (4789).to_bytes(2, "big"):
                break
        flags = struct.unpack("!H", packet[6:8])[0]
        assert flags & 0x4000                                   # DF
        assert packet[ihl + 6:ihl + 8] == b"\0\0"               # UDP checksum zero
    finally:
        for sock in (peer, raw, *senders):
            sock.close()
        net.flush_neighbors()


def test_a_tap_whose_mtu_does_not_fit_is_refused(net: Net) -> None:
    """tap0 at MTU 1460 over an IPv4 underlay of 1500 (1450 left): refused, saying the fix."""
    ca = net.ns("ca")
    ip("link", "set", "tap0", "mtu", "1460", netns=ca)
    try:
        result = subprocess.run(
            nsexec_argv(ca, [sys.executable, "-m", "tapengine", "switch", "tap0", "--vxlan", "7",
                             "--local", underlay_addr("a", 4), "--remote",
                             underlay_addr("b", 4), "--underlay-netns", net.ns("a")]),
            capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        ip("link", "set", "tap0", "mtu", "1400", netns=ca)
    assert result.returncode == 1
    assert "tap0's MTU 1460 does not fit the VXLAN underlay" in result.stderr
    assert "ip link set tap0 mtu 1450" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--local", "10.0.0.1"], "--local needs --vxlan VNI"),
    (["--vxlan", "7"], "--vxlan needs --local ADDR"),
    (["--vxlan", "7", "--local", "10.0.0.1"], "at least one --remote"),
    (["--vxlan", "16777216", "--local", "10.0.0.1"], "VNI"),
    (["--vxlan", "7", "--local", "10.0.0.1", "--fdb", "02:00:00:00:00:01"], "MAC=ADDR"),
    (["--vxlan", "7", "--local", "10.0.0.1", "--remote", "fe80::1%eth0"], "invalid IP"),
])  # fmt: skip
def test_cli_refuses_bad_vxlan_options(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tapengine", "switch", "tap0", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("local", "remote", "message"), [
    ("10.66.0.1", "0.0.0.0", "unspecified"),
    ("fd66::1", "::", "unspecified"),
    ("10.66.0.1", "255.255.255.255", "broadcast"),
    ("10.66.0.1", "127.0.0.1", "loopback"),
    ("fd66::1", "::1", "loopback"),
    ("fd66::1", "fe80::2", "link-local"),
])  # fmt: skip
def test_a_vtep_no_datagram_can_reach_is_refused_before_any_socket(
        local: str, remote: str, message: str) -> None:  # fmt: skip
    # (refused by the checks, before a route lookup or a socket: nothing is opened)
    for remotes, fdb in (([remote], []), ([], [("02:00:00:00:00:01", remote)])):
        with pytest.raises(InvalidValueError, match=f"VTEP .* is .*{message}"):
            open_vxlan_port(VNI, local, remotes, fdb=fdb)


def test_a_vtep_at_a_subnets_broadcast_address_is_refused(
        make_netns: Callable[[str], str]) -> None:
    """The kernel's route to it says broadcast (every datagram would be refused, EACCES)."""
    netns = make_netns("bc")
    with IPRoute(netns=netns) as ipr:
        ipr.link("add", ifname="under0", kind="veth", peer="under1")
        (index,) = ipr.link_lookup(ifname="under0")
        ipr.addr("add", index=index, address="10.66.0.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
    with pytest.raises(InvalidValueError,
                       match=r"10\.66\.0\.255 is the broadcast address of the subnet of under0"):
        open_vxlan_port(VNI, "10.66.0.1", ["10.66.0.255"], netns=netns)


def test_forward_takes_one_tap_and_one_remote() -> None:
    result = subprocess.run([sys.executable, "-m", "tapengine", "forward", "tap0", "--vxlan", "7",
                             "--local", "10.0.0.1", "--remote", "10.0.0.2", "--remote",
                             "10.0.0.3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "exactly one --remote" in result.stderr


def test_inner_flow_hash_keeps_a_flow_and_separates_ports() -> None:
    from tapengine._vxlan import inner_flow_hash

    def frame(sport: int) -> bytes:
        ipv4 = bytes.fromhex("450000200000400040110000") + bytes([10, 0, 0, 1, 10, 0, 0, 2])
        return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ipv4 + struct.pack("!HH", sport, 53)

    assert inner_flow_hash(frame(1000)) == inner_flow_hash(frame(1000) + b"payload")
    assert len({inner_flow_hash(frame(port)) for port in range(1000, 1016)}) == 16
    with pytest.raises(ValueError):
        inner_flow_hash(b"short")


def test_a_topology_declares_a_vxlan_port_and_checks_it() -> None:
    from tapengine.errors import TopologyError
    from tapengine.topology import Topology

    data = {
        "netns": ["host"],
        "tap": {"tap0": {"netns": "host"}},
        "vxlan": {"overlay": {"vni": 42, "local": "10.77.13.1", "remotes": ["10.77.13.2"],
                              "fdb": ["02:00:00:00:00:09=10.77.13.3"], "dstport": 8472,
                              "netns": "host"}},
        "engine": {"ports": ["tap0", "overlay"], "mode": "switch"},
    }
    topology = Topology.from_dict(data, prefix="p-")
    (_, overlay) = topology.engine_ports
    assert (overlay.name, overlay.netns, overlay.vni, overlay.dstport) == (
        "overlay", "p-host", 42, 8472)
    assert overlay.fdb == [("02:00:00:00:00:09", "10.77.13.3")]
    for bad, message in [({"vni": 1 << 24}, "vxlan.overlay: invalid VNI"),
                         ({"remotes": ["not-an-ip"]}, "invalid IP address"),
                         ({"netns": "elsewhere"}, "not defined in this topology"),
                         ({"remotes": [], "fdb": []}, "needs 'remotes' or 'fdb'")]:
        broken = {**data, "vxlan": {"overlay": {**data["vxlan"]["overlay"], **bad}}}
        with pytest.raises(TopologyError, match=message):
            Topology.from_dict(broken)
