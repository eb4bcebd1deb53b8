"""Opening tun/tap queues: name checks before any syscall, flags read back from the kernel, and
the errors a user meets (busy device, flag mismatch, no privilege, no /dev/net/tun)."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys

import pytest
from pyroute2 import IPRoute

import tapengine.tun as tun
from netutil import link_exists
from tapengine.errors import (
    DeviceBusyError,
    FlagMismatchError,
    InvalidNameError,
    PrivilegeError,
    TunUnavailableError,
)
from tapengine.tun import IfFlag, Offload, open_queue, open_queues
from tapengine.validate import check_ifname


@pytest.mark.parametrize(
    ("name", "problem"),
    [("", "empty"), ("a" * 16, "16 bytes"), ("é" * 8, "16 bytes"), ("a/b", "'/'"),
     ("a b", "whitespace"), ("a\tb", "whitespace"), ("a\0b", "NUL"), ("..", "path"),
     ("eth0:1", "':'")],
)
def test_invalid_names_are_refused_before_any_syscall(
    name: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tun, "_open_control", lambda: pytest.fail("a syscall was made"))
    with pytest.raises(InvalidNameError, match=problem):
        open_queue(name)


def test_longest_valid_name_is_accepted() -> None:
    assert check_ifname("a" * 15) == "a" * 15


def test_non_string_name_is_refused() -> None:
    with pytest.raises(InvalidNameError, match="str"):
        check_ifname(b"tap0")


def test_missing_dev_net_tun_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tun, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(TunUnavailableError, match=r"does not exist.*modprobe tun"):
        open_queue("tetest0")


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'tap' or 'tun'"):
        open_queue("tetest0", "tep")  # type: ignore[arg-type]


TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int), written out here as an independent oracle


def _kernel_flags(fd: int) -> int:
    raw = fcntl.ioctl(fd, TUNGETIFF, b"\0" * 40)
    return struct.unpack("16sH22x", raw)[1]


def test_features_include_what_we_rely_on(privileged: None) -> None:
    wanted = IfFlag.TUN | IfFlag.TAP | IfFlag.NO_PI | IfFlag.VNET_HDR | IfFlag.MULTI_QUEUE
    assert tun.features() & wanted == wanted


@pytest.mark.parametrize("mode", ["tap", "tun"])
def test_open_creates_a_device_that_goes_with_its_fd(privileged: None, prefix: str,
                                                     mode: tun.Mode) -> None:
    name = prefix + mode
    with open_queue(name, mode, vnet_hdr=True) as queue:
        with IPRoute() as ipr:
            (index,) = ipr.link_lookup(ifname=name)
            link = ipr.link("get", index=index)[0]
        info = dict(link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")["attrs"])
        assert info["IFLA_TUN_TYPE"] == (2 if mode == "tap" else 1)
        assert info["IFLA_TUN_VNET_HDR"] == 1 and info["IFLA_TUN_PI"] == 0
        flags = _kernel_flags(queue.fileno())
        assert queue.device_flags() == flags
        assert flags & (IfFlag.VNET_HDR | IfFlag.NO_PI) == IfFlag.VNET_HDR | IfFlag.NO_PI
        assert os.get_blocking(queue.fileno()) is False
        assert os.get_inheritable(queue.fileno()) is False
        assert fcntl.fcntl(queue.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert queue.closed
    assert not link_exists(name)


def test_second_open_of_a_single_queue_device_is_busy(privileged: None, prefix: str) -> None:
    with open_queue(prefix + "b"), pytest.raises(DeviceBusyError, match=r"busy.*one fd"):
        open_queue(prefix + "b")


def test_opening_a_tap_as_tun_is_a_flag_mismatch(privileged: None, prefix: str) -> None:
    with open_queue(prefix + "m", "tap", multi_queue=True):
        with pytest.raises(FlagMismatchError, match="other flags"):
            open_queue(prefix + "m", "tun", multi_queue=True)
        with pytest.raises(FlagMismatchError, match="single-queue"):
            open_queue(prefix + "m", "tap")


def test_multi_queue_opens_several_queues(privileged: None, prefix: str) -> None:
    queues = open_queues(prefix + "q", 3)
    try:
        assert len({q.fileno() for q in queues}) == 3
        assert all(_kernel_flags(q.fileno()) & IfFlag.MULTI_QUEUE for q in queues)
        # the kernel's count of attached queues (real_num_rx/tx_queues)
        assert _sysfs_queues(prefix + "q") == ["rx-0", "rx-1", "rx-2", "tx-0", "tx-1", "tx-2"]
        queues.pop().close()
        assert _sysfs_queues(prefix + "q") == ["rx-0", "rx-1", "tx-0", "tx-1"]
    finally:
        for queue in queues:
            queue.close()
    assert not link_exists(prefix + "q")


def _sysfs_queues(name: str) -> list[str]:
    return sorted(os.listdir(f"/sys/class/net/{name}/queues"))


def test_offload_negotiation_needs_vnet_hdr_and_is_read_back(privileged: None,
                                                             prefix: str) -> None:
    with open_queue(prefix + "o") as plain, pytest.raises(ValueError, match="vnet_hdr"):
        plain.set_offload(Offload.CSUM)
    with open_queue(prefix + "v", vnet_hdr=True) as queue:
        enabled = queue.negotiate_offload(Offload.CSUM | Offload.TSO4 | Offload.TSO6)
        assert enabled == Offload.CSUM | Offload.TSO4 | Offload.TSO6
        features = _ethtool_features(prefix + "v")
        assert features["tx-tcp-segmentation"] == "on"


def _ethtool_features(name: str) -> dict[str, str]:
    """The kernel's view of the offloads, through ethtool's netlink interface (pyroute2)."""
    from pyroute2.ethtool import Ethtool

    with Ethtool() as ethtool:
        feats = ethtool.get_features(name)
    return {key: "on" if feat.enable else "off" for key, feat in feats.features.items()}


def test_missing_privilege_says_cap_net_admin(privileged: None, prefix: str) -> None:
    code = f"import tapengine; tapengine.open_queue({prefix + 'p'!r})"
    result = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", code],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode != 0
    assert "CAP_NET_ADMIN" in result.stderr
    assert PrivilegeError.__name__ in result.stderr
    assert not link_exists(prefix + "p")
