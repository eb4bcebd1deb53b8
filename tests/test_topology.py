"""tapengine.topology: checking descriptions, building all-or-nothing, TCP across a bridge,
teardown on signals, and cleanup after SIGKILL. The machine's state is read back with ``ip``."""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_helpers import addresses, leftovers, link, namespaces, remove_everything, snapshot
from netutil import wait_until
from tapengine import devices
from tapengine.cleanup import cleanup_prefix
from tapengine.errors import InvalidValueError, TopologyError
from tapengine.kstats import read_stats
from tapengine.netns import inside_netns, run_in_netns
from tapengine.topology import EnginePort, Topology

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "topology.toml"

#: Two hosts (red, blue) with veths into a bridge in a third namespace (sw), and two engine taps.
BRIDGED: dict[str, Any] = {
    "netns": {"red": {}, "blue": {}, "sw": {}},
    "bridge": {"br0": {"netns": "sw", "ports": ["red-sw", "blue-sw"]}},
    "veth": {
        "red0": {"netns": "red", "peer": "red-sw", "peer_netns": "sw",
                 "addresses": ["10.77.9.1/24"]},
        "blue0": {"netns": "blue", "peer": "blue-sw", "peer_netns": "sw",
                  "addresses": ["10.77.9.2/24"]},
    },
    "tap": {"tap0": {"netns": "sw", "queues": 2, "vnet_hdr": True, "mtu": 9000},
            "tap1": {"netns": "sw", "queues": 2, "vnet_hdr": True}},
    "engine": {"ports": ["tap0", "tap1"]},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _sweep(prefix: str) -> Iterator[None]:
    yield
    if os.geteuid() == 0:
        remove_everything(prefix)


def bridged(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BRIDGED)
    data.update(changes)
    return data


# -- checking descriptions (nothing is built; no privilege needed) ----------------------------


def put(section: str, name: str, key: str, value: Any) -> Any:
    return lambda d: d[section][name].__setitem__(key, value)


def append(*path_and_value: str) -> Any:
    *path, value = path_and_value

    def mutate(data: dict[str, Any]) -> None:
        for key in path:
            data = data[key]
        data.append(value)  # type: ignore[attr-defined]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "key", "fragment"),
    [
        (lambda d: d.update(colour="red"), "colour", "unknown key"),
        (put("veth", "red0", "adresses", []), "veth.red0.adresses", "did you mean 'addresses'"),
        (put("veth", "red0", "netns", "green"), "veth.red0.netns", "'green' is not defined"),
        (put("veth", "red0", "peer_netns", "green"), "veth.red0.peer_netns", "not defined"),
        (lambda d: d["veth"]["red0"].pop("peer"), "veth.red0.peer", "needs a peer"),
        (append("bridge", "br0", "ports", "ghost"), "bridge.br0.ports", "'ghost' is not a link"),
        (append("bridge", "br0", "ports", "red0"), "bridge.br0.ports", "bridge's namespace"),
        (append("engine", "ports", "red0"), "engine.ports", "not a tap"),
        (put("tap", "tap0", "mac", "01:00:00:00:00:01"), "tap.tap0.mac", "multicast"),
        (put("tap", "tap0", "mtu", 10), "tap.tap0.mtu", "invalid MTU"),
        (put("tap", "tap0", "mtu", "9000"), "tap.tap0.mtu", "expected an integer"),
        (put("veth", "blue0", "addresses", ["10.77.9.2"]), "veth.blue0.addresses", "prefix length"),
        (put("tap", "tap0", "queues", 0), "tap.tap0.queues", "expected 1 to"),
        (put("tap", "tap0", "mode", "eth"), "tap.tap0.mode", "'tap' or 'tun'"),
        (lambda d: d["tap"].update({"a-long-tap-name": {}}), "tap.a-long-tap-name", "bytes long"),
        (lambda d: d["tap"].update({"red-sw": {"netns": "sw"}}), "veth", "used twice"),
        (lambda d: d.update(tap=["tap0"]), "tap", "expected a table"),
    ],
)
def test_bad_descriptions_name_the_key_path(mutate: Any, key: str, fragment: str) -> None:
    data = bridged()
    mutate(data)
    with pytest.raises(TopologyError) as caught:
        Topology.from_dict(data, source="lab.toml", prefix="te000000")
    assert caught.value.key.startswith(key), caught.value.key
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("lab.toml")


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "topo.toml"
    path.write_text('prefix = "te"\n\n[netns.red]\n\n[tap.t0]\nnetns = "red"\nqueus = 2\n')
    with pytest.raises(TopologyError) as caught:
        Topology.from_file(path)
    assert caught.value.line == 7
    assert str(caught.value).startswith(f"{path}:7: tap.t0.queus: unknown key")


def test_undefined_reference_in_a_file_points_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "topo.toml"
    path.write_text('[netns.red]\n[bridge.br0]\nnetns = "red"\nports = ["nope"]\n')
    with pytest.raises(TopologyError) as caught:
        Topology.from_file(path)
    assert (caught.value.line, caught.value.key) == (4, "bridge.br0.ports")


def test_toml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "topo.toml"
    path.write_text('[netns.red]\n[tap.t0\n')
    with pytest.raises(TopologyError, match="not valid TOML") as caught:
        Topology.from_file(path)
    assert caught.value.line == 2


def test_example_topology_describes_its_engine_ports() -> None:
    topology = Topology.from_file(EXAMPLE, prefix="te000000")
    assert topology.engine_ports == [
        EnginePort("te000000tap0", "te000000sw", "tap", 2, True),
        EnginePort("te000000tap1", "te000000sw", "tap", 2, True),
    ]
    names = {link["name"] for link in topology.describe()["links"]}
    assert {"te000000red0", "te000000red-sw", "te000000br0"} <= names


@pytest.mark.parametrize("path", sorted(EXAMPLE.parent.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_example_is_valid(path: Path) -> None:
    topology = Topology.from_file(path)
    assert topology.prefix and all(ns.startswith(topology.prefix) for ns in topology.namespaces)
    assert topology.engine_ports


def test_wire_example_builds_and_its_ports_open_in_their_namespaces(
    privileged: None, prefix: str
) -> None:
    with Topology.from_file(EXAMPLE.parent / "wire.toml", prefix=prefix) as topology:
        assert [(p.name, p.netns) for p in topology.engine_ports] == [
            (prefix + "red0", prefix + "red"), (prefix + "blue0", prefix + "blue"),
        ]
        for port in topology.engine_ports:
            (queue,) = port.open_queues()
            with queue:
                assert queue.vnet_hdr and not queue.multi_queue
                assert link(port.name, port.netns)["operstate"] != "DOWN"  # carrier: fd open
            assert link(port.name) is None  # opened in its namespace, nothing created in root
    assert leftovers(prefix) == []


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"ports": ["tap0", "tap1"], "mode": "hub"}, "expected 'wire' or 'switch'"),
        ({"ports": ["tap0"]}, "a wire serves 2 to 2 ports, not 1"),
        ({"ports": ["tap0"], "mode": "switch"}, "a switch serves 2 to 64 ports, not 1"),
    ],
)
def test_engine_section_is_checked(engine: dict[str, Any], message: str) -> None:
    data = {"tap": {"tap0": {}, "tap1": {}}, "engine": engine}
    with pytest.raises(TopologyError, match=message):
        Topology.from_dict(data)


def test_topology_up_forward_serves_the_engine_section_until_a_signal(
    privileged: None, prefix: str
) -> None:
    """The wire example's two hosts reach each other only through the engine: the kernel's ping
    is the witness; SIGTERM prints the final stats and removes everything."""
    process = start_up(EXAMPLE.parent / "wire.toml", "--forward", "--prefix", prefix)
    watchdog = threading.Timer(120, process.kill)  # a hung command fails the test, not the suite
    watchdog.start()
    try:
        assert process.stdout is not None
        ready = next((line for line in process.stdout if line.startswith("forwarding")), "")
        assert f"{prefix}red0 <-> {prefix}blue0" in ready, process.communicate()
        ping = subprocess.run(["ip", "netns", "exec", prefix + "red", "ping", "-c", "3", "-i",
                               "0.2", "-W", "5", "10.77.1.2"], capture_output=True, text=True,
                              check=False)  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()
            if line.startswith(prefix)}  # fmt: skip
    assert int(rows[prefix + "red0"][2]) >= 3 and int(rows[prefix + "blue0"][2]) >= 3  # rx packets
    assert leftovers(prefix) == []


def test_prefix_comes_from_the_file_unless_overridden() -> None:
    assert Topology.from_file(EXAMPLE).prefix == "demo-"
    assert Topology.from_dict(bridged(prefix="ab")).namespaces == ["abred", "abblue", "absw"]


@pytest.mark.parametrize("bad", ["", "t", " te", "te "])
def test_cleanup_refuses_short_or_blank_prefixes(bad: str) -> None:
    with pytest.raises(InvalidValueError, match="refusing prefix"):
        cleanup_prefix(bad)


# -- building against the kernel ----------------------------------------------------------------


def test_up_builds_what_the_description_says(privileged: None, prefix: str) -> None:
    topology = Topology.from_dict(bridged(), prefix=prefix)
    with topology:
        assert {prefix + n for n in ("red", "blue", "sw")} <= namespaces()
        sw = prefix + "sw"
        assert link(prefix + "red-sw", sw)["master"] == prefix + "br0"
        assert link(prefix + "blue-sw", sw)["master"] == prefix + "br0"
        assert "10.77.9.1/24" in addresses(prefix + "red0", prefix + "red")
        tap = link(prefix + "tap0", sw)
        assert tap["mtu"] == 9000 and "UP" in tap["flags"]
        assert tap["linkinfo"]["info_data"]["multi_queue"] is True
        queues = topology.engine_ports[0].open_queues()
        try:
            assert link(prefix + "tap0", sw)["linkinfo"]["info_data"]["numqueues"] == 2
            assert all(q.vnet_hdr and q.multi_queue for q in queues)
        finally:
            for queue in queues:
                queue.close()
    assert leftovers(prefix) == []


def test_kernel_tcp_carries_data_across_the_bridge(privileged: None, prefix: str) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    with Topology.from_dict(bridged(), prefix=prefix):
        with inside_netns(prefix + "blue"):
            server = socket.create_server(("10.77.9.2", 0))
        received = hashlib.sha256()
        counted: list[int] = []

        def serve() -> None:
            with server, server.accept()[0] as conn:
                total = 0
                while chunk := conn.recv(65536):
                    received.update(chunk)
                    total += len(chunk)
                counted.append(total)

        thread = threading.Thread(target=serve)
        thread.start()
        port_before = read_stats(prefix + "blue-sw", prefix + "sw")

        def send() -> None:
            with socket.create_connection(("10.77.9.2", server.getsockname()[1]), timeout=10) as c:
                c.sendall(payload)

        run_in_netns(prefix + "red", send)
        thread.join(timeout=30)
        assert counted == [len(payload)]
        assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
        # the bytes went through the bridge: its port toward blue transmitted them
        port_after = read_stats(prefix + "blue-sw", prefix + "sw")
        assert port_after.tx_bytes - port_before.tx_bytes > len(payload)


def test_a_failing_step_inside_up_leaves_nothing(
    privileged: None, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(prefix)
    calls = []
    real = devices.Link.add_address

    def fail_on_second(self: devices.Link, cidr: str, **kwargs: Any) -> None:
        calls.append(cidr)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        real(self, cidr, **kwargs)

    monkeypatch.setattr(devices.Link, "add_address", fail_on_second)
    with pytest.raises(RuntimeError, match="injected"):
        Topology.from_dict(bridged(), prefix=prefix).up()
    assert len(calls) == 2  # it failed late: namespaces, bridge, veths and tap existed by then
    assert leftovers(prefix) == []
    assert snapshot(prefix) == before


def test_a_step_the_kernel_refuses_leaves_nothing(privileged: None, prefix: str) -> None:
    data = bridged()
    data["tap"]["tap0"]["mtu"] = 65535  # passes our range check; a tap's max_mtu is 65521
    with pytest.raises(InvalidValueError, match="MTU 65535"):
        Topology.from_dict(data, prefix=prefix).up()
    assert leftovers(prefix) == []


def test_up_refuses_to_touch_existing_things(privileged: None, prefix: str) -> None:
    subprocess.run(["ip", "netns", "add", prefix + "blue"], check=True)
    before = snapshot(prefix)
    with pytest.raises(TopologyError, match=f"already exists: {prefix}blue"):
        Topology.from_dict(bridged(), prefix=prefix).up()
    assert snapshot(prefix) == before
    assert leftovers(prefix) == [prefix + "blue"]


def test_down_from_a_fresh_object_removes_everything(privileged: None, prefix: str) -> None:
    Topology.from_dict(bridged(), prefix=prefix).up()
    assert leftovers(prefix)
    Topology.from_dict(bridged(), prefix=prefix).down()  # as 'topology down' in a new process
    assert leftovers(prefix) == []


# -- signals and crashes (the CLI in a subprocess) ----------------------------------------------


def big_topology(tmp_path: Path, prefix: str) -> Path:
    """Many namespaces and veths, so that 'up' takes long enough to be interrupted mid-way."""
    lines = [f'prefix = "{prefix}"']
    for i in range(12):
        lines += [f"[netns.n{i}]"]
    for i in range(12):
        lines += [f"[veth.v{i}]", f'netns = "n{i}"', f'peer = "p{i}"',
                  f'peer_netns = "n{(i + 1) % 12}"', f'addresses = ["10.77.{i}.1/24"]']  # fmt: skip
    path = tmp_path / "big.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_up(path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tapengine", "topology", "up", str(path), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def processes_with_argument(argument: str) -> list[int]:
    """Live processes with ``argument`` on their command line (a forked child keeps its
    parent's; a zombie has none)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    if os.fsencode(argument) in file.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue  # it exited while we looked
    return pids


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.001)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_up_leaves_nothing(
    privileged: None, prefix: str, tmp_path: Path, signum: int
) -> None:
    process = start_up(big_topology(tmp_path, prefix))
    try:
        wait_for(lambda: os.path.exists(f"/run/netns/{prefix}n1"))
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert not os.path.exists(f"/run/netns/{prefix}n11"), "the signal arrived too late to test"
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert leftovers(prefix) == []


def test_sigkill_during_up_then_cleanup_restores_a_clean_machine(
    privileged: None, prefix: str, tmp_path: Path
) -> None:
    topology = big_topology(tmp_path, prefix)
    process = start_up(topology)
    try:
        wait_for(lambda: os.path.exists(f"/run/netns/{prefix}n1"))
        process.kill()  # SIGKILL: no handler runs, the half-built topology stays
        process.communicate(timeout=30)
    finally:
        process.kill()
    # pyroute2 forks a helper to create each namespace; one orphaned by the kill may still add
    # a namespace: wait until no process started for this topology is left
    wait_until(lambda: not processes_with_argument(str(topology)), 30,
               "the killed process's forked helpers to exit")
    left = leftovers(prefix)
    assert left and f"{prefix}n11" not in left, left
    result = subprocess.run(
        [sys.executable, "-m", "tapengine", "cleanup", "--prefix", prefix],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"removed namespace {prefix}n0" in result.stdout
    assert leftovers(prefix) == []


def test_hold_keeps_the_topology_until_a_signal(
    privileged: None, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "small.toml"
    path.write_text(EXAMPLE.read_text())
    process = start_up(path, "--prefix", prefix, "--hold")
    try:
        assert process.stdout is not None
        while "holding" not in (line := process.stdout.readline()):
            assert line, process.stderr.read() if process.stderr else ""
        assert link(prefix + "tap0", prefix + "sw") is not None
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in stderr
    assert leftovers(prefix) == []
