"""tapengine.devices against the kernel's view, read back with ``ip -j`` (never our own state)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

import pytest

from control_helpers import addresses, ip_json, link, remove_everything, snapshot
from tapengine import devices, tun, validate
from tapengine.errors import (
    DeviceBusyError,
    DeviceExistsError,
    DeviceNotFoundError,
    FlagMismatchError,
    InvalidNameError,
    InvalidValueError,
)
from tapengine.netns import run_in_netns


@pytest.fixture(autouse=True)
def _sweep(prefix: str) -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        remove_everything(prefix)


@pytest.fixture
def ns(make_netns: Callable[[str], str]) -> str:
    return make_netns("a")


def tun_data(name: str, netns: str | None) -> dict[str, object]:
    info = link(name, netns)
    assert info is not None, f"{name} does not exist in {netns}"
    assert info["linkinfo"]["info_kind"] == "tun"
    return info["linkinfo"]["info_data"]


# -- checks before syscalls (no privilege needed) ---------------------------------------------


@pytest.mark.parametrize("mac", ["", "02:00:00:00:00", "zz:00:00:00:00:01", "01:00:5e:00:00:01",
                                 "00:00:00:00:00:00", "02-00-00-00-00-01"])  # fmt: skip
def test_invalid_mac_is_refused(mac: str) -> None:
    with pytest.raises(InvalidValueError, match="MAC"):
        validate.check_mac(mac)


@pytest.mark.parametrize("mtu", [0, 67, 65536, -1, 1500.0, "1500", True])
def test_invalid_mtu_is_refused(mtu: object) -> None:
    with pytest.raises(InvalidValueError, match="MTU"):
        validate.check_mtu(mtu)


@pytest.mark.parametrize(
    "cidr", ["10.77.0.1", "10.77.0.300/24", "10.77.0.1/33", "fd77::1/129", "x/8"]
)
def test_invalid_address_is_refused(cidr: str) -> None:
    with pytest.raises(InvalidValueError, match="address"):
        validate.check_cidr(cidr)


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "a:b"])
def test_invalid_interface_names_are_refused_before_any_syscall(name: str) -> None:
    with pytest.raises(InvalidNameError):
        devices.create_tap(name)


def test_netlink_calls_refuse_to_run_inside_an_event_loop() -> None:
    async def call() -> None:
        devices.list_links()

    with pytest.raises(RuntimeError, match="asyncio"):
        asyncio.run(call())


# -- tun and tap ------------------------------------------------------------------------------


def test_multi_queue_vnet_hdr_tap_with_owner_and_group(ns: str, prefix: str) -> None:
    tap = devices.create_tap(
        prefix + "t", queues=4, vnet_hdr=True, owner=1234, group=4321, netns=ns
    )
    assert (tap.name, tap.netns, tap.kind) == (prefix + "t", ns, "tap")
    data = tun_data(prefix + "t", ns)
    assert data["type"] == "tap"
    assert data["multi_queue"] is True and data["vnet_hdr"] is True and data["persist"] is True
    assert data["pi"] is False
    assert str(data["user"]) in ("1234",) or data["user"] == 1234
    assert str(data["group"]) in ("4321",) or data["group"] == 4321
    assert link(prefix + "t") is None  # created inside the namespace, not in the root


def test_single_queue_tun(ns: str, prefix: str) -> None:
    devices.create_tap(prefix + "u", mode="tun", netns=ns)
    data = tun_data(prefix + "u", ns)
    assert data["type"] == "tun" and data["multi_queue"] is False and data["vnet_hdr"] is False


def test_tap_context_manager_deletes_what_it_created(ns: str, prefix: str) -> None:
    with devices.create_tap(prefix + "t", netns=ns):
        assert link(prefix + "t", ns) is not None
    assert link(prefix + "t", ns) is None


def test_non_persistent_tap_lives_as_long_as_its_queues(ns: str, prefix: str) -> None:
    tap = devices.create_tap(prefix + "t", queues=3, persistent=False, netns=ns)
    data = tun_data(prefix + "t", ns)
    assert data["persist"] is False and data["numqueues"] == 3
    for queue in tap.queues:
        queue.close()
    assert link(prefix + "t", ns) is None


def test_existing_name_is_refused_and_the_device_kept(ns: str, prefix: str) -> None:
    devices.create_tap(prefix + "t", netns=ns)
    before = link(prefix + "t", ns)
    with pytest.raises(DeviceExistsError, match="already exists"):
        devices.create_tap(prefix + "t", queues=2, netns=ns)
    with pytest.raises(DeviceExistsError):
        devices.create_bridge(prefix + "t", netns=ns)
    after = link(prefix + "t", ns)
    assert after["ifindex"] == before["ifindex"]
    assert after["linkinfo"] == before["linkinfo"]


def test_mtu_mac_state_and_addresses_read_back(ns: str, prefix: str) -> None:
    tap = devices.create_tap(prefix + "t", netns=ns)
    tap.set_mtu(9000)
    tap.set_mac("02:77:00:00:00:01")
    tap.add_address("10.77.0.1/24")
    tap.add_address("fd77::1/64", nodad=True)
    tap.up()
    info = link(prefix + "t", ns)
    assert info["mtu"] == 9000
    assert info["address"] == "02:77:00:00:00:01"
    assert "UP" in info["flags"]
    assert {"10.77.0.1/24", "fd77::1/64"} <= addresses(prefix + "t", ns)
    assert set(tap.info()["addresses"]) >= {"10.77.0.1/24", "fd77::1/64"}
    tap.down()
    assert "UP" not in link(prefix + "t", ns)["flags"]


@pytest.mark.parametrize(
    ("method", "value"),
    [("set_mtu", 10), ("set_mtu", 65535), ("set_mac", "ff:ff:ff:ff:ff:ff"),
     ("add_address", "10.77.0.1"), ("add_address", "fd77::1/200")],
)  # fmt: skip
def test_bad_settings_change_nothing(ns: str, prefix: str, method: str, value: object) -> None:
    tap = devices.create_tap(prefix + "t", netns=ns)
    before = snapshot(prefix)
    # 65535 passes our range check but exceeds a tap's max_mtu (65521): the kernel refuses it.
    with pytest.raises(InvalidValueError):
        getattr(tap, method)(value)
    assert snapshot(prefix) == before


def test_move_to_another_namespace_and_back(make_netns: Callable[[str], str], prefix: str) -> None:
    a, b = make_netns("a"), make_netns("b")
    tap = devices.create_tap(prefix + "t", netns=a)
    tap.move_to(b)
    assert link(prefix + "t", a) is None
    assert link(prefix + "t", b)["ifindex"] == tap.index
    assert tap.netns == b
    tap.delete()
    assert link(prefix + "t", b) is None


def test_delete_missing_link_says_so_unless_forced(ns: str, prefix: str) -> None:
    with pytest.raises(DeviceNotFoundError, match="no link named"):
        devices.delete_link(prefix + "x", netns=ns)
    devices.delete_link(prefix + "x", netns=ns, force=True)


def test_get_link_and_list_links_by_kind(ns: str, prefix: str) -> None:
    devices.create_tap(prefix + "t", netns=ns)
    devices.create_bridge(prefix + "b", netns=ns)
    found = devices.get_link(prefix + "b", ns)
    assert isinstance(found, devices.Bridge) and found.index == link(prefix + "b", ns)["ifindex"]
    assert [x.name for x in devices.list_links(ns, kind="tap")] == [prefix + "t"]
    everything = {x.name: x.index for x in devices.list_links(ns)}
    assert everything == {i["ifname"]: i["ifindex"] for i in ip_json("link", "show", netns=ns)}
    with pytest.raises(DeviceNotFoundError):
        devices.get_link(prefix + "zz", ns)


# -- veth and bridge ---------------------------------------------------------------------------


def test_veth_peer_is_created_directly_in_its_namespace(
    make_netns: Callable[[str], str], prefix: str
) -> None:
    a, b = make_netns("a"), make_netns("b")
    with devices.create_veth(prefix + "va", prefix + "vb", netns=a, peer_netns=b) as veth:
        assert veth.peer is not None and veth.peer.netns == b
        here, there = link(prefix + "va", a), link(prefix + "vb", b)
        assert here["linkinfo"]["info_kind"] == there["linkinfo"]["info_kind"] == "veth"
        assert here["link_index"] == there["ifindex"]  # each names the other as its peer
        assert link(prefix + "vb", a) is None
    assert link(prefix + "va", a) is None and link(prefix + "vb", b) is None


def test_bridge_attach_detach_and_ports(ns: str, prefix: str) -> None:
    bridge = devices.create_bridge(prefix + "br", netns=ns)
    devices.create_veth(prefix + "v0", prefix + "v1", netns=ns)
    devices.create_tap(prefix + "t", netns=ns)
    bridge.attach(prefix + "v0")
    bridge.attach(prefix + "t")
    assert link(prefix + "v0", ns)["master"] == prefix + "br"
    assert link(prefix + "t", ns)["master"] == prefix + "br"
    assert bridge.ports() == sorted([prefix + "v0", prefix + "t"])
    bridge.detach(prefix + "v0")
    assert "master" not in link(prefix + "v0", ns)
    assert bridge.ports() == [prefix + "t"]
    with pytest.raises(DeviceNotFoundError, match="not a port"):
        bridge.detach(prefix + "v0")


def test_bridge_stp_is_off_by_default_and_on_when_asked(ns: str, prefix: str) -> None:
    devices.create_bridge(prefix + "b0", netns=ns)
    devices.create_bridge(prefix + "b1", netns=ns, stp=True)
    assert link(prefix + "b0", ns)["linkinfo"]["info_data"]["stp_state"] == 0
    assert link(prefix + "b1", ns)["linkinfo"]["info_data"]["stp_state"] == 1


def test_attach_to_missing_bridge_or_non_bridge_changes_nothing(ns: str, prefix: str) -> None:
    devices.create_tap(prefix + "t", netns=ns)
    devices.create_tap(prefix + "u", netns=ns)
    before = snapshot(prefix)
    with pytest.raises(DeviceNotFoundError):
        devices.get_bridge(prefix + "nobr", ns)
    with pytest.raises(InvalidValueError, match="not a bridge"):
        devices.get_bridge(prefix + "u", ns)
    bridge = devices.create_bridge(prefix + "br", netns=ns)
    with pytest.raises(DeviceNotFoundError, match="no link named"):
        bridge.attach(prefix + "missing")
    bridge.delete()
    assert snapshot(prefix) == before


def test_static_neighbor_entry(ns: str, prefix: str) -> None:
    tap = devices.create_tap(prefix + "t", netns=ns)
    tap.add_address("10.77.0.1/24")
    devices.add_neighbor(prefix + "t", "10.77.0.9", "02:77:00:00:00:09", netns=ns)
    entries = ip_json("neigh", "show", "dev", prefix + "t", netns=ns)
    assert {"dst": "10.77.0.9", "lladdr": "02:77:00:00:00:09"}.items() <= entries[0].items()
    assert "PERMANENT" in entries[0]["state"]


# -- opening queues of a tap created here (issue 3, item 2) ------------------------------------


def test_open_all_queues_of_a_multi_queue_tap(ns: str, prefix: str) -> None:
    devices.create_tap(prefix + "t", queues=4, vnet_hdr=True, netns=ns)
    queues = run_in_netns(ns, tun.open_queues, prefix + "t", 4, "tap", vnet_hdr=True)
    try:
        assert len({q.fileno() for q in queues}) == 4
        assert tun_data(prefix + "t", ns)["numqueues"] == 4
    finally:
        for queue in queues:
            queue.close()
    assert tun_data(prefix + "t", ns)["numqueues"] == 0


def test_second_open_of_a_single_queue_tap_explains_ebusy(ns: str, prefix: str) -> None:
    devices.create_tap(prefix + "t", netns=ns)
    with (
        run_in_netns(ns, tun.open_queue, prefix + "t"),
        pytest.raises(DeviceBusyError, match=r"busy.*single-queue"),
    ):
        run_in_netns(ns, tun.open_queue, prefix + "t")


@pytest.mark.parametrize(
    ("created", "opened", "actual"),
    [({"queues": 2}, {"multi_queue": False}, "it is a multi-queue tap"),
     ({"queues": 1}, {"multi_queue": True}, "it is a single-queue tap"),
     ({"mode": "tun"}, {"mode": "tap"}, "it is a single-queue tun")],
)  # fmt: skip
def test_open_with_other_flags_explains_einval(
    ns: str, prefix: str, created: dict[str, object], opened: dict[str, object], actual: str
) -> None:
    devices.create_tap(prefix + "t", netns=ns, **created)  # type: ignore[arg-type]
    before = link(prefix + "t", ns)
    with pytest.raises(FlagMismatchError, match="other flags") as caught:
        run_in_netns(ns, tun.open_queue, prefix + "t", **opened)
    assert str(caught.value).endswith(actual)
    assert link(prefix + "t", ns)["linkinfo"] == before["linkinfo"]


def test_opening_a_veth_as_a_tap_says_what_it_is(ns: str, prefix: str) -> None:
    devices.create_veth(prefix + "v", prefix + "w", netns=ns)
    with pytest.raises(FlagMismatchError, match="it is a veth, not a tun/tap device"):
        run_in_netns(ns, tun.open_queue, prefix + "v")
