"""The engine between real taps whose links live in test namespaces.

The kernel is the independent peer: its TCP stack checks every segment (and we compare digests of
what was sent and received), ping gets its replies or not, and its per-device counters must agree
exactly with the engine's (what the engine read from a tap is what the kernel sent out of it).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from fwdnet import (
    Host,
    add_neighbor,
    attach,
    delete_link,
    kernel_stats,
    link_exists,
    ping,
    quiet_ipv6,
    tcp_transfer,
    udp_send,
)
from netutil import sleeps_in_epoll_wait, wait_until
from tapengine import engine as engine_module
from tapengine._forward import Forwarder
from tapengine.cli.common import CommandError
from tapengine.cli.forward import serve
from tapengine.devices import create_tap
from tapengine.engine import Engine, Port, PortEvent, close_ports, open_port, open_ports
from tapengine.netns import inside_netns

MB = 1 << 20


@pytest.fixture
def lan(make_netns: Callable[[str], str], prefix: str) -> Iterator[Callable[..., list[Host]]]:
    """``lan(n, queues=1, offload=True)``: n taps opened here as engine ports, each moved into its
    own namespace as 10.77.0.(k+1)/24. Yields the hosts; the ports are in ``lan.ports``."""
    opened: list[Port] = []

    def make(n: int, *, queues: int = 1, offload: bool = True) -> list[Host]:
        names = [f"{prefix}p{k}" for k in range(n)]
        ports = open_ports(names, queues=queues, offload=offload)
        opened.extend(ports)
        make.ports = ports  # type: ignore[attr-defined]
        hosts = []
        for k, name in enumerate(names):
            netns = make_netns(f"n{k}")
            quiet_ipv6(netns)
            hosts.append(attach(name, netns, f"10.77.0.{k + 1}"))
        return hosts

    yield make  # type: ignore[misc]
    for port in opened:
        port.close()


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "no-offload"])
def test_wire_carries_ping_and_200_mb_of_tcp_intact(lan: Callable[..., list[Host]],
                                                      offload: bool) -> None:
    a, b = lan(2, offload=offload)
    with Engine(lan.ports, "wire") as engine:  # type: ignore[attr-defined]
        result = ping(a, b)
        assert result.returncode == 0, result.stdout + result.stderr
        sent, received, nbytes = tcp_transfer(a, b, 200 * MB)
        assert nbytes == 200 * MB
        assert received == sent
    stats = engine.stats()
    # What the engine read from a tap is exactly what the kernel sent out of it, and the reverse.
    # The engine has stopped, so its counters are final; the kernel counts a tap's tx when the
    # frame is read and its rx when it is written, so nothing in flight can be counted by one side
    # and not the other.
    for port, host, other in ((stats.ports[0], a, b), (stats.ports[1], b, a)):
        assert port.rx_packets == kernel_stats(host)["tx_packets"]
        assert port.rx_bytes == kernel_stats(host)["tx_bytes"]
        assert stats.port(other.ifname).tx_packets == kernel_stats(other)["rx_packets"]
    assert stats.ports[0].rx_bytes >= 200 * MB
    assert not any(port.drops.get("tx_error") or port.drops.get("bad_header")
                   for port in stats.ports)
    if offload:
        assert "tso4" in stats.ports[0].offload
        assert stats.ports[0].rx_bytes / stats.ports[0].rx_packets > 9000  # superframes


def test_io_uring_backend_carries_tcp_intact(lan: Callable[..., list[Host]],
                                             needs_io_uring: None) -> None:
    a, b = lan(2)
    with Engine(lan.ports, "wire", io="uring") as engine:  # type: ignore[attr-defined]
        sent, received, nbytes = tcp_transfer(a, b, 50 * MB)
        assert (received, nbytes) == (sent, 50 * MB)
    assert engine.stats().ports[0].rx_packets == kernel_stats(a)["tx_packets"]


def test_two_queues_give_two_workers_and_flows_arrive_intact(
        lan: Callable[..., list[Host]]) -> None:
    a, b = lan(2, queues=2)
    with Engine(lan.ports, "wire") as engine:  # type: ignore[attr-defined]
        assert engine.workers == 2
        assert len({t.name for t in engine._threads}) == 2
        for _ in range(4):
            sent, received, nbytes = tcp_transfer(a, b, 20 * MB)
            assert (received, nbytes) == (sent, 20 * MB)
    stats = engine.stats()
    assert stats.ports[0].rx_packets == kernel_stats(a)["tx_packets"]


def test_switch_floods_unknown_unicast_once_then_forwards_only_to_the_learned_port(
        lan: Callable[..., list[Host]]) -> None:
    hosts = lan(4)
    a, b, c, d = hosts
    add_neighbor(a, b)              # static neighbors: no ARP broadcast, so the first frame
    add_neighbor(b, a)              # toward b is genuinely unknown unicast
    with Engine(lan.ports, "switch") as engine:  # type: ignore[attr-defined]
        bystanders_before = [kernel_stats(h)["rx_packets"] for h in (c, d)]
        udp_send(a, b, [b"first"])
        wait_until(lambda: [kernel_stats(h)["rx_packets"] for h in (c, d)]
                   == [n + 1 for n in bystanders_before], 30,
                   "c and d to receive the flooded frame")
        assert engine.stats().port(a.ifname).flooded == 1
        udp_send(b, a, [b"reply"])                      # b is learned now
        udp_send(a, b, [b"again"] * 10)
        wait_until(lambda: kernel_stats(b)["rx_packets"] >= 11, 30,
                   "b to receive the first frame and the ten after it")
        stats = engine.stats()
        assert stats.port(a.ifname).flooded == 1        # not flooded again
        assert stats.port(b.ifname).flooded == 0        # a was known from its first frame
        assert [kernel_stats(h)["rx_packets"] for h in (c, d)] == \
            [n + 1 for n in bystanders_before]
        # (b answers each datagram with an ICMP port unreachable, so count b's side exactly
        # against the kernel rather than by hand.)
        assert stats.port(b.ifname).tx_packets == kernel_stats(b)["rx_packets"] >= 11
        assert stats.port(c.ifname).tx_packets == kernel_stats(c)["rx_packets"]


@pytest.mark.parametrize("queues", [1, 2], ids=["1-queue", "2-queues-shared-table"])
def test_switch_of_four_namespaces_every_pair_talks_and_the_table_knows_every_port(
        lan: Callable[..., list[Host]], queues: int) -> None:
    hosts = lan(4, queues=queues)
    with Engine(lan.ports, "switch") as engine:  # type: ignore[attr-defined]
        for src in hosts:
            for dst in hosts:
                if src is not dst:
                    result = ping(src, dst, count=1)
                    assert result.returncode == 0, f"{src.ip} -> {dst.ip}: {result.stdout}"
        table = {mac: port for mac, port, _ in engine.stats().mac_table or []}
    assert table == {host.mac: host.ifname for host in hosts}


def test_deleting_one_tap_during_a_transfer_leaves_the_others_forwarding(
        lan: Callable[..., list[Host]]) -> None:
    a, b, c = lan(3)
    deleted: list[int] = []

    def delete_c_midway(sent: int) -> None:
        if sent >= 40 * MB and not deleted:
            delete_link(c)
            deleted.append(sent)

    with Engine(lan.ports, "switch") as engine:  # type: ignore[attr-defined]
        assert ping(a, c, count=1).returncode == 0
        sent, received, nbytes = tcp_transfer(a, b, 120 * MB, during=delete_c_midway)
        assert deleted
        assert (received, nbytes) == (sent, 120 * MB)
        assert ping(a, b, count=2).returncode == 0      # still serving the others
        events = wait_until(engine.events, 30, "the engine to report the deleted port")
        assert [event.port for event in events] == [c.ifname]
        assert events[0].errno in (errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EIO, errno.EPIPE)
        stats = engine.stats()
    assert not stats.port(c.ifname).up
    assert stats.port(a.ifname).up and stats.port(b.ifname).up
    assert c.mac not in {mac for mac, _, _ in stats.mac_table or []}
    assert not link_exists(c.ifname, c.netns)


def test_deleting_the_namespace_that_holds_a_port_leaves_the_others_forwarding_asleep(
        lan: Callable[..., list[Host]]) -> None:
    """The namespace goes, and its tap with it: that port is reported down once, the others go
    on, and the worker goes back to sleep in epoll_wait (the kernel's wait channel) instead of
    spinning on a dead fd."""
    a, b, c = lan(3)
    with Engine(lan.ports, "switch") as engine:  # type: ignore[attr-defined]
        assert ping(a, c, count=1).returncode == 0
        subprocess.run(["ip", "netns", "del", c.netns], check=True)
        events = wait_until(engine.events, 30, "the engine to report the port whose namespace went")
        assert [event.port for event in events] == [c.ifname]
        assert ping(a, b, count=2).returncode == 0
        (worker,) = [t for t in threading.enumerate() if t.name.startswith("tapengine-worker")]
        wait_until(lambda: sleeps_in_epoll_wait(worker), 30, "the worker to sleep again")
        stats = engine.stats()
    assert not stats.port(c.ifname).up
    assert stats.port(a.ifname).up and stats.port(b.ifname).up


def test_writes_to_a_link_that_is_down_are_dropped_with_their_reason_and_the_port_stays_up(
        lan: Callable[..., list[Host]]) -> None:
    a, b = lan(2)
    with IPRoute(netns=b.netns) as ipr:
        (index,) = ipr.link_lookup(ifname=b.ifname)
        ipr.link("set", index=index, state="down")
    with Engine(lan.ports, "wire") as engine:  # type: ignore[attr-defined]
        assert ping(a, b, count=2).returncode != 0
        stats = engine.stats()
        assert stats.port(b.ifname).drops.get("link_down", 0) >= 1     # a's ARP requests
        assert stats.port(b.ifname).up
        with IPRoute(netns=b.netns) as ipr:
            ipr.link("set", index=index, state="up")
        result = ping(a, b, count=10)        # a's ARP entry failed: it resolves again first
        assert result.returncode == 0, result.stdout
    assert engine.events() == []


def test_engine_gives_back_every_descriptor_it_opened(lan: Callable[..., list[Host]]) -> None:
    a, b = lan(2, queues=2)
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with Engine(lan.ports, "wire"):  # type: ignore[attr-defined]
            assert ping(a, b, count=1).returncode == 0
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_port_closed_after_stop_leaves_no_device_behind(prefix: str, privileged: None) -> None:
    name = prefix + "gone"
    with open_port(name) as port:
        assert link_exists(name)
        with Engine([port, open_port(prefix + "gone2")], "wire") as engine:
            assert engine.running
        engine.ports[1].close()
        assert not engine.running
    assert not link_exists(name)
    assert not link_exists(prefix + "gone2")


def test_engine_refuses_bad_port_sets(prefix: str, privileged: None) -> None:
    with open_port(prefix + "x") as x, open_port(prefix + "y") as y, \
            open_port(prefix + "z") as z:
        with pytest.raises(ValueError, match="exactly two"):
            Engine([x, y, z], "wire")
        with pytest.raises(ValueError, match="twice"):
            Engine([x, x], "switch")
        with pytest.raises(ValueError, match="mode"):
            Engine([x, y], "hub")  # type: ignore[arg-type]


def test_rings_are_sized_from_the_mtu_unless_superframes_can_arrive(
    prefix: str, privileged: None, make_netns: Callable[[str], str]
) -> None:
    """Plain frames get MTU-sized slots (the device's MTU, read when the port opens),
    superframes 64 KiB; the memory each ring takes is in the stats and JSON."""
    netns = make_netns("m")
    with inside_netns(netns):
        for name in ("p0", "p1"):
            create_tap(prefix + name).set_mtu(9000)  # persistent: gone with the namespace
        plain = [open_port(prefix + name, offload=False) for name in ("p0", "p1")]
        offload = [open_port(prefix + name) for name in ("s0", "s1")]
    with plain[0], plain[1], offload[0], offload[1], Engine(plain, "wire") as small, \
            Engine(offload, "wire") as big:  # fmt: skip
        sized = small.stats().as_json()["ports"][0]["ring"]
        full = big.stats().as_json()["ports"][0]["ring"]
    assert sized["slot_size"] == 9000 + 22  # the MTU, an Ethernet header and two VLAN tags
    assert full["slot_size"] >= 65536
    assert full["bytes"] >= 4 * sized["bytes"] and sized["slots"] == full["slots"]


def test_io_uring_takes_a_budget_that_is_not_a_power_of_two(prefix: str, privileged: None,
                                                            needs_io_uring: None) -> None:
    with open_port(prefix + "u0") as x, open_port(prefix + "u1") as y, \
            Engine([x, y], "wire", io="uring", budget=100) as engine:   # was a ValueError
        assert engine.running


def test_a_worker_that_fails_takes_the_engine_down_and_says_why(
        prefix: str, privileged: None, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Forwarder] = []

    class FirstOneFails(Forwarder):
        def __init__(self, *args: object) -> None:
            made.append(self)

        def run(self) -> None:
            if self is made[0]:
                raise OSError(errno.EBUSY, "every port is down (simulated)")
            super().run()

    monkeypatch.setattr(engine_module, "Forwarder", FirstOneFails)
    with open_port(prefix + "f0", queues=2) as x, open_port(prefix + "f1", queues=2) as y:
        engine = Engine([x, y], "wire")
        engine.start()
        try:
            # the other worker could forward, but an engine with a dead worker is down
            wait_until(lambda: not engine.running, 30, "the engine to stop with its dead worker")
            assert isinstance(engine.failure, OSError)
            assert engine.failure.errno == errno.EBUSY
        finally:
            with pytest.raises(OSError, match="every port is down"):
                engine.close()


def test_serve_says_in_one_line_that_a_worker_failed_and_closes_the_ports(
        prefix: str, privileged: None, monkeypatch: pytest.MonkeyPatch) -> None:
    class Fails(Forwarder):
        def run(self) -> None:
            raise OSError(errno.EBUSY, "every port is down (simulated)")

    monkeypatch.setattr(engine_module, "Forwarder", Fails)
    ports = open_ports([prefix + "w0", prefix + "w1"])
    with pytest.raises(CommandError, match=r"worker failed and stopped the engine: .*every port"):
        serve(ports, "wire", command="forward", label="w0 <-> w1")
    assert all(queue.closed for port in ports for queue in port.queues)
    assert not link_exists(prefix + "w0")


def test_serve_leaves_the_ports_open_when_a_worker_does_not_stop(
        prefix: str, privileged: None, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()

    class Stuck(Forwarder):
        def run(self) -> None:       # ignores stop(): a worker wedged in a syscall, say
            started.set()
            release.wait()

    def stop_once_forwarding() -> None:
        if started.wait(30):
            os.kill(os.getpid(), signal.SIGTERM)    # serve() turns it into a stop request

    monkeypatch.setattr(engine_module, "Forwarder", Stuck)
    ports = open_ports([prefix + "k0", prefix + "k1"])
    stopper = threading.Thread(target=stop_once_forwarding)
    stopper.start()
    try:
        with pytest.raises(CommandError, match=r"did not stop.*stay open"):
            serve(ports, "wire", command="forward", label="k0 <-> k1")
        assert not any(queue.closed for port in ports for queue in port.queues)
        assert link_exists(prefix + "k0")
    finally:
        release.set()
        stopper.join()
        close_ports(ports)


def test_a_port_event_says_why_the_port_went_down() -> None:
    assert "the device was deleted" in str(PortEvent("tap0", errno.ENODEV))
    assert "it hung up" in str(PortEvent("tap0", errno.EPIPE))
    busy = str(PortEvent("tap0", errno.EBUSY))
    assert os.strerror(errno.EBUSY) in busy and "reads kept failing" in busy
