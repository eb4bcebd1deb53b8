"""tapengine.kstats against the kernel: counters match ``ip -j -s -s link`` and real traffic."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator

import pytest

from control_helpers import ip_json, remove_everything
from netutil import wait_until
from tapengine import devices
from tapengine.errors import DeviceNotFoundError
from tapengine.kstats import LinkStats, rates, read_all_stats, read_stats
from tapengine.netns import create_netns, inside_netns, run_in_netns

PAYLOAD = 1000
# A UDP datagram on Ethernet: 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + payload.
FRAME = 14 + 20 + 8 + PAYLOAD


@pytest.fixture(autouse=True)
def _sweep(prefix: str) -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        remove_everything(prefix)


def _quiet() -> None:
    # No IPv6 on the test links: router solicitations and DAD would add packets we do not send.
    for scope in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "w") as sysctl:
            sysctl.write("1")


@pytest.fixture
def pair(privileged: None, prefix: str) -> Iterator[tuple[str, str]]:
    """Namespaces a and b joined by veth a0 (10.77.5.1) -- b0 (10.77.5.2), static ARP, quiet."""
    a, b = prefix + "a", prefix + "b"
    with create_netns(a), create_netns(b):
        run_in_netns(a, _quiet)
        run_in_netns(b, _quiet)
        veth = devices.create_veth(prefix + "a0", prefix + "b0", netns=a, peer_netns=b)
        assert veth.peer is not None
        veth.add_address("10.77.5.1/24")
        veth.peer.add_address("10.77.5.2/24")
        # Static neighbours: no ARP exchange, so the counters hold exactly what the test sends.
        devices.add_neighbor(prefix + "a0", "10.77.5.2", veth.peer.info()["mac"], netns=a)
        devices.add_neighbor(prefix + "b0", "10.77.5.1", veth.info()["mac"], netns=b)
        veth.up()
        veth.peer.up()
        # A veth drops what it sends until both ends have carrier: wait for operstate UP.
        ends = ((prefix + "a0", a), (prefix + "b0", b))
        wait_until(lambda: all(read_stats(name, ns).operstate == "UP" for name, ns in ends), 30,
                   "both veth ends to have carrier")
        yield a, b


def send_udp(netns: str, count: int) -> None:
    with inside_netns(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(b"x" * PAYLOAD, ("10.77.5.2", 9))


def test_counters_count_exactly_the_packets_sent(pair: tuple[str, str], prefix: str) -> None:
    a, b = pair
    sent_before = read_stats(prefix + "a0", a)
    received_before = read_stats(prefix + "b0", b)
    send_udp(a, 25)
    sent, received = read_stats(prefix + "a0", a), read_stats(prefix + "b0", b)
    assert sent.tx_packets - sent_before.tx_packets == 25
    assert sent.tx_bytes - sent_before.tx_bytes == 25 * FRAME
    assert received.rx_packets - received_before.rx_packets == 25
    assert received.rx_bytes - received_before.rx_bytes == 25 * FRAME
    assert (received.name, received.netns) == (prefix + "b0", b)


def test_snapshot_matches_ip_json_field_for_field(pair: tuple[str, str], prefix: str) -> None:
    a, b = pair
    send_udp(a, 7)
    for name, netns in ((prefix + "a0", a), (prefix + "b0", b)):
        ours = read_stats(name, netns).as_ip_json()
        (theirs,) = ip_json("-s", "-s", "link", "show", "dev", name, netns=netns)
        assert ours["stats64"] == theirs["stats64"]
        assert ours["ifname"] == theirs["ifname"] and ours["ifindex"] == theirs["ifindex"]
        assert ours["flags"] == theirs["flags"] and ours["mtu"] == theirs["mtu"]
        assert ours["stats64"]["tx" if netns == a else "rx"]["packets"] >= 7


def test_read_all_stats_covers_every_link(pair: tuple[str, str], prefix: str) -> None:
    a, _ = pair
    snapshots = read_all_stats(a)
    assert [s.name for s in snapshots] == [i["ifname"] for i in ip_json("link", "show", netns=a)]
    assert len({s.timestamp for s in snapshots}) == 1


def test_rates_between_two_snapshots_of_real_traffic(pair: tuple[str, str], prefix: str) -> None:
    a, _ = pair
    before = read_stats(prefix + "a0", a)
    send_udp(a, 40)
    after = read_stats(prefix + "a0", a)
    rate = rates(before, after)
    interval = after.timestamp - before.timestamp
    assert rate.interval == pytest.approx(interval)
    assert rate.tx_packets == pytest.approx(40 / interval)
    assert rate.tx_bits == pytest.approx(40 * FRAME * 8 / interval)
    # b answers with ICMP port unreachable (nothing listens on port 9): rx follows the counters
    assert rate.rx_packets == pytest.approx((after.rx_packets - before.rx_packets) / interval)


def test_missing_link_raises_not_found(pair: tuple[str, str], prefix: str) -> None:
    with pytest.raises(DeviceNotFoundError):
        read_stats(prefix + "zz", pair[0])


def _snapshot(timestamp: float, **counters: int) -> LinkStats:
    return LinkStats(name="t0", netns=None, timestamp=timestamp, **counters)


def test_rates_arithmetic() -> None:
    before = _snapshot(10.0, rx_packets=100, rx_bytes=10_000, tx_packets=5, tx_bytes=500)
    after = _snapshot(12.0, rx_packets=300, rx_bytes=30_000, tx_packets=5, tx_bytes=500,
                      rx_dropped=4)  # fmt: skip
    rate = rates(before, after)
    assert (rate.rx_packets, rate.rx_bytes, rate.rx_bits) == (100.0, 10_000.0, 80_000.0)
    assert (rate.tx_packets, rate.tx_bits, rate.rx_dropped) == (0.0, 0.0, 2.0)


@pytest.mark.parametrize(
    "after",
    [_snapshot(10.0), _snapshot(9.0), _snapshot(11.0, rx_packets=1),
     dataclasses.replace(_snapshot(11.0, rx_packets=9), name="other")],
)  # fmt: skip
def test_rates_refuse_inconsistent_snapshots(after: LinkStats) -> None:
    with pytest.raises(ValueError):
        rates(_snapshot(10.0, rx_packets=5), after)


def test_snapshots_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _snapshot(1.0).rx_packets = 3  # type: ignore[misc]
