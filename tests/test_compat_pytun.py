"""tapengine.compat.pytun against python-pytun itself: the same program, the same results.

tests/pytun_script.py is an ordinary pytun program (a tun and a tap, addresses, MTU, MAC, frames
both ways through the kernel's UDP sockets, persistence, multi-queue, bad calls). It runs once
with ``pytun`` and once with ``tapengine.compat.pytun``, each in a namespace of its own created
here, and what each run saw, the kernel's ``ip -j`` view included, must be equal. The additions
pytun never had (IPv6 addresses, the context manager, ``read_batch``) are checked against the
kernel in a namespace too. Nothing runs in the root namespace.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tapengine.nsexec import nsexec_argv

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "pytun_script.py"
README = (HERE.parent / "README.md").read_text()


def run_in(netns: str, *args: str) -> str:
    """Run ``python ARGS`` inside ``netns``; its stdout (a failure shows its stderr)."""
    result = subprocess.run(nsexec_argv(netns, [sys.executable, *args]), capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_pytun_program_sees_the_same_with_pytun_and_with_the_compat_module(
    make_netns: Callable[[str], str],
) -> None:
    pytest.importorskip("pytun", reason="python-pytun (the test extra) is the reference")
    seen = {module: json.loads(run_in(make_netns(tag), str(SCRIPT), module))
            for tag, module in (("p", "pytun"), ("c", "tapengine.compat.pytun"))}  # fmt: skip
    reference, ours = seen["pytun"], seen["tapengine.compat.pytun"]
    assert ours.keys() == reference.keys()
    for key in reference:
        assert ours[key] == reference[key], key
    # ... and the program did what it meant to (not two identical failures):
    assert reference["socket got"] == "from the tun" and reference["socket2 got"] == "from the tap"
    assert reference["tun read"].endswith(b"to the tun".hex())
    assert reference["tun kernel"][1][0]["local"] == "10.77.0.1"
    assert reference["tap kernel"][0]["address"] == "02:77:00:00:00:01"
    assert reference["persistent"]["tun"]["persist"] and reference["not persistent"] is None
    assert reference["bad calls"]["flags 0"]["raised"] == "Error"
    assert reference["vnet read arp"].startswith("00" * 10 + "ff" * 6)  # header, then broadcast


EXTRAS = r"""
import errno, json, os, socket, subprocess
import tapengine.compat.pytun as pytun

def kernel_addrs(name):
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True,
                         text=True, check=True).stdout
    return [f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"]]

def link_exists(name):
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0

seen = {}
with pytun.TunTapDevice(name="ptx0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI) as tun:
    tun.add_address("fd77::1/64", nodad=True)
    tun.addr = "10.77.0.1"
    tun.dstaddr = "10.77.0.2"
    tun.up()
    seen["addresses"] = sorted(tun.addresses)
    seen["kernel addresses"] = sorted(kernel_addrs("ptx0"))
    tun.del_address("fd77::1/64")
    seen["after del"] = [a for a in kernel_addrs("ptx0") if a.startswith("fd77")]
    try:
        tun.del_address("fd77::1/64")
    except pytun.Error as err:
        seen["del again"] = err.errno

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("10.77.0.1", 4000))
    sent = [b"datagram %02d" % i for i in range(20)]
    for payload in sent:
        sock.sendto(payload, ("10.77.0.2", 5000))
    got = []
    while len(got) < len(sent):
        batch = tun.read_batch(2048, 64)
        got += [p[28:] for p in batch if p[0] >> 4 == 4 and p[9] == 17]  # IPv4/UDP
    seen["batch payloads"] = [p.decode() for p in got]
    sock.sendto(b"x" * 1000, ("10.77.0.2", 5000))
    sock.sendto(b"short", ("10.77.0.2", 5000))
    small = []
    while not small:
        small = [p[28:] for p in tun.read_batch(200) if p[0] >> 4 == 4 and p[9] == 17]
    seen["after a long one"] = [p.decode() for p in small]
    seen["truncated"] = tun.truncated
    for bad in ((10, 64), (2048, 0), (2048.0, 64)):
        try:
            tun.read_batch(*bad)
        except ValueError as err:
            seen.setdefault("refused", []).append(str(err).split(":")[0])
    os.set_blocking(tun.fileno(), False)
    while True:
        try:
            tun.read_batch(2048)
        except pytun.Error as err:
            seen["nothing queued"] = err.errno
            break
seen["closed"] = tun.fileno()
seen["device after with"] = link_exists("ptx0")
print(json.dumps(seen))
"""


def test_ipv6_addresses_context_manager_and_read_batch(make_netns: Callable[[str], str]) -> None:
    seen = json.loads(run_in(make_netns("x"), "-c", EXTRAS))
    assert seen["addresses"] == seen["kernel addresses"]
    assert "fd77::1/64" in seen["addresses"] and "10.77.0.1/32" in seen["addresses"]
    assert seen["after del"] == [] and seen["del again"] == 99  # EADDRNOTAVAIL
    assert seen["batch payloads"] == [f"datagram {i:02d}" for i in range(20)]
    assert seen["after a long one"] == ["short"] and seen["truncated"] == 1
    assert seen["nothing queued"] == 11  # EAGAIN, as read() on a non-blocking fd
    assert seen["refused"] == ["invalid read_batch size 10", "invalid read_batch max_packets 0",
                               "invalid read_batch size 2048.0"]  # fmt: skip
    assert seen["closed"] == -1 and seen["device after with"] is False


def readme_block(section: str) -> str:
    start = README.index(section)
    match = re.search(r"```python\n(.*?)```", README[start:], re.S)
    assert match, f"no python block after {section!r}"
    return match.group(1)


def test_the_readme_example_runs_as_shown(make_netns: Callable[[str], str]) -> None:
    out = run_in(make_netns("r"), "-c", readme_block("### python-pytun compatibility"))
    assert "tun0 10.8.0.1" in out and "fd08::1/64" in out
