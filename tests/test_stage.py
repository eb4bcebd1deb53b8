"""Stages (pyx/stage.pyx): the user's logic between a forwarder's receive and its egress choice.

The forwarder runs over SOCK_SEQPACKET socket pairs (tests/test_forward.py's Harness): what a stage
sees is compared with the bytes sent in, what it decides with what comes out of each port and
with the counters. The CLI test at the end runs ``tapengine forward --stage`` between two
namespaces with the kernel's own UDP and TCP sockets as the independent peers. C stages: the
README's example is built and run by tests/test_readme.py, examples/stages/acl against the
installed wheel by ``make capi-check`` (examples/capi/check-install.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyroute2 import IPRoute

import test_cli_forward as clitest
from fwdnet import add_neighbor, in_netns, link_exists, tcp_transfer
from netutil import wait_until
from tapengine import (
    DEFAULT,
    DROP,
    FLOOD,
    Batch,
    Forwarder,
    FunctionStage,
    PacketRing,
    Stage,
    StageError,
    open_ports,
    open_queue,
)
from tapengine._stage import STAGE_COUNTER_NAMES, as_stage
from tapengine.engine import Engine
from tapengine.netns import run_in_netns
from tapengine.stages import StageLoadError, load_stage
from test_forward import MAC, Harness, frame

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "stages"


def stage_counters(forwarder: Forwarder, index: int = 0) -> dict[str, int]:
    return dict(zip(STAGE_COUNTER_NAMES, map(int, forwarder.stage_counters[index]), strict=True))


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    """``harness(mode, nports, *stages)``: a running forwarder with these stages."""
    made: list[Harness] = []

    def make(mode: str, nports: int, *stages: Any, names: list[str] | None = None) -> Harness:
        h = Harness(Forwarder(mode), nports)
        for stage in stages:
            h.forwarder.add_stage(FunctionStage(stage) if not isinstance(stage, Stage) else stage,
                                  names or [f"p{k}" for k in range(nports)])
        h.thread.start()
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_a_python_stage_sees_exactly_the_batch_received(harness: Callable[..., Harness]) -> None:
    seen: list[tuple[int, str, list[bytes], list[int]]] = []

    def look(batch: Batch) -> None:
        frames = [bytes(row[:length]) for row, length in zip(batch.frames, batch.lengths,
                                                              strict=True)]
        seen.append((batch.port, batch.port_name, frames, batch.verdict.tolist()))

    h = harness("wire", 2, look)
    sent = [frame(MAC[1], MAC[0], bytes([k]) * (46 + k)) for k in range(20)]
    for data in sent:
        h.send(0, data)
    assert h.recv_all(1) == sent            # a stage that sets nothing changes nothing
    assert [frames for _, _, frames, _ in seen for frames in frames] == sent
    assert {(port, name) for port, name, _, _ in seen} == {(0, "p0")}
    assert all(set(verdict) == {DEFAULT} for _, _, _, verdict in seen)
    counters = stage_counters(h.forwarder)
    assert counters["seen"] == 20 and counters["batches"] == len(seen)
    assert counters["dropped"] == counters["redirected"] == 0


def test_drop_verdicts_are_counted_under_the_stage_and_as_filtered(
        harness: Callable[..., Harness]) -> None:
    def drop_odd(batch: Batch) -> None:
        batch.verdict[batch.frames[:, 14] % 2 == 1] = DROP

    h = harness("wire", 2, drop_odd)
    sent = [frame(MAC[1], MAC[0], bytes([k]) * 46) for k in range(30)]
    for data in sent:
        h.send(0, data)
    assert h.recv_all(1) == sent[::2]
    assert stage_counters(h.forwarder)["dropped"] == 15
    assert h.counter(0, "drop_filtered") == 15


def test_redirect_and_flood_verdicts_override_the_switch(harness: Callable[..., Harness]) -> None:
    def steer(batch: Batch) -> None:
        batch.verdict[batch.frames[:, 14] == 1] = 2
        batch.verdict[batch.frames[:, 14] == 2] = FLOOD

    h = harness("switch", 3, steer)
    h.forwarder.table.learn_mac(MAC[1], 1)
    to_port2 = frame(MAC[1], MAC[0], b"\x01" * 46)
    flooded = frame(MAC[1], MAC[0], b"\x02" * 46)
    normal = frame(MAC[1], MAC[0], b"\x03" * 46)
    for data in (to_port2, flooded, normal):
        h.send(0, data)
    assert h.recv_all(1) == [flooded, normal]
    assert h.recv_all(2) == [to_port2, flooded]
    assert stage_counters(h.forwarder)["redirected"] == 2


def test_a_verdict_naming_no_port_is_counted_and_sent_nowhere(
        harness: Callable[..., Harness]) -> None:
    def misdirect(batch: Batch) -> None:
        batch.verdict[:] = 5                # a wire has ports 0 and 1
        batch.verdict[0] = -7               # not a verdict at all

    h = harness("wire", 2, misdirect)
    for k in range(4):
        h.send(0, frame(MAC[1], MAC[0], bytes([k]) * 46))
    h.wait_rx(0, 4)
    assert h.recv_all(1) == [] and h.recv_all(0) == []
    assert stage_counters(h.forwarder)["misdirected"] == 4
    assert h.counter(0, "drop_no_egress") == 4


def test_a_redirect_to_a_port_that_is_down_is_counted_there() -> None:
    # Port 2 is a listening seqpacket socket with a connection waiting: readable for ever, every
    # read fails (ENOTCONN), so the forwarder takes it down after a second (test_forward.py).
    def to_port2(batch: Batch) -> None:
        batch.verdict[:] = 2

    h = Harness(Forwarder("switch"), 2)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + f"tapengine-stage-test-{os.getpid()}-{threading.get_native_id()}")
    listener.listen(1)
    caller = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    caller.connect(listener.getsockname())
    listener.setblocking(False)
    h.forwarder.add_port(listener.fileno(), PacketRing(64, 2048))
    h.forwarder.add_stage(FunctionStage(to_port2))
    h.thread.start()
    try:
        wait_until(lambda: not h.forwarder.port_up(2), 30, "port 2 to go down")
        for k in range(3):
            h.send(0, frame(MAC[1], MAC[0], bytes([k]) * 46))
        assert h.recv_all(1) == []
        assert h.counter(2, "drop_port_down") == 3
        assert stage_counters(h.forwarder)["redirected"] == 3
    finally:
        h.close()
        listener.close()
        caller.close()


def test_a_stage_rewrites_frames_and_lengths_in_place(harness: Callable[..., Harness]) -> None:
    new_dst = np.frombuffer(bytes.fromhex("020000000009"), dtype=np.uint8)

    def rewrite(batch: Batch) -> None:
        batch.frames[:, 0:6] = new_dst
        batch.lengths[:] -= 10

    h = harness("wire", 2, rewrite)
    sent = frame(MAC[1], MAC[0], b"z" * 60)
    h.send(0, sent)
    assert h.recv_all(1) == [new_dst.tobytes() + sent[6:-10]]


def test_a_stage_prepends_a_header_in_the_headroom_without_a_copy(
        harness: Callable[..., Harness]) -> None:
    tag = np.frombuffer(b"TAG!", dtype=np.uint8)

    def encapsulate(batch: Batch) -> None:
        batch.offsets[:] -= 4                   # the frame now starts 4 bytes earlier
        batch.lengths[:] += 4
        for k in range(batch.n):                # the slots, headroom included, for the header
            start = int(batch.offsets[k])
            batch.ring.slots[batch.first + k, start:start + 4] = tag

    h = harness("wire", 2, encapsulate)
    sent = frame(MAC[1], MAC[0], b"p" * 46)
    h.send(0, sent)
    assert h.recv_all(1) == [b"TAG!" + sent]


def test_an_offset_into_the_virtio_header_is_refused_as_invalid(
        harness: Callable[..., Harness]) -> None:
    def overrun(batch: Batch) -> None:
        batch.offsets[0] = 0                    # below the 10 bytes of the virtio-net header

    h = harness("wire", 2, overrun)
    h.send(0, frame(MAC[1], MAC[0]))
    h.wait_rx(0, 1)
    assert h.recv_all(1) == []
    assert stage_counters(h.forwarder)["invalid"] == 1


def test_a_length_past_the_slot_drops_the_packet_and_counts_it(
        harness: Callable[..., Harness]) -> None:
    def overrun(batch: Batch) -> None:
        batch.lengths[0] = batch.frames.shape[1] + 1

    h = harness("wire", 2, overrun)
    h.send(0, frame(MAC[1], MAC[0]))
    h.wait_rx(0, 1)
    assert h.recv_all(1) == []
    assert stage_counters(h.forwarder)["invalid"] == 1
    assert h.counter(0, "drop_malformed") == 1


def test_stages_run_in_order_and_each_counts_its_own_verdicts(
        harness: Callable[..., Harness]) -> None:
    order: list[str] = []

    def first(batch: Batch) -> None:
        order.append("first")
        batch.verdict[:] = DROP

    def second(batch: Batch) -> None:
        order.append("second")
        assert (batch.verdict == DROP).all()    # sees the verdicts so far
        batch.verdict[0] = DEFAULT              # and may take one back

    h = harness("wire", 2, first, second)
    sent = frame(MAC[1], MAC[0])
    h.send(0, sent)
    assert h.recv_all(1) == [sent]
    assert order == ["first", "second"]
    assert stage_counters(h.forwarder, 0)["dropped"] == 1


@pytest.mark.parametrize("fail_on", [1, 3])
def test_an_exception_in_a_stage_stops_the_forwarder_with_its_traceback(fail_on: int) -> None:
    calls: list[int] = []

    def flaky(batch: Batch) -> None:
        calls.append(batch.n)
        if len(calls) == fail_on:
            raise ZeroDivisionError("the stage's own bug")

    h = Harness(Forwarder("wire"), 2)
    h.forwarder.add_stage(FunctionStage(flaky))
    failure: dict[str, BaseException] = {}

    def run() -> None:
        try:
            h.forwarder.run()
        except BaseException as exc:  # the point of the test
            failure["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        for k in range(fail_on):            # one frame per batch: each read before the next
            h.send(0, frame(MAC[1], MAC[0], bytes([k]) * 46))
            wait_until(lambda k=k: len(calls) > k, 30, f"batch {k + 1} to reach the stage")
        thread.join(30)
        assert not thread.is_alive(), "the forwarder did not stop after the stage raised"
        # the failed batch's frame is dropped under the stage's name and counted as filtered
        # on the port: the two views of the same drop agree
        assert (stage_counters(h.forwarder, 0)["batches"], stage_counters(h.forwarder, 0)["seen"],
                stage_counters(h.forwarder, 0)["dropped"]) == (fail_on, fail_on, 1)
        assert h.counter(0, "drop_filtered") == 1
    finally:
        h.forwarder.stop()
        thread.join(30)
        h.forwarder.close()
        for sock in h.inner + h.outer:
            sock.close()
    error = failure["error"]
    assert error.first_batch == (fail_on == 1)      # type: ignore[attr-defined]
    assert isinstance(error, StageError) and error.stage == "flaky"
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert error.__cause__.__traceback__ is not None
    assert error.first_batch == (fail_on == 1)


def test_a_stage_that_failed_is_never_called_again_not_even_in_the_same_pass() -> None:
    # Frames wait on both ports before the forwarder starts, so its first pass serves both: the
    # stage raises on port 0's batch and must not be called for port 1's (a stage that raised
    # may be broken; and it failed on its first batch, which is what the CLI then says).
    calls: list[int] = []

    def broken(batch: Batch) -> None:
        calls.append(batch.port)
        raise ZeroDivisionError("broken from the start")

    h = Harness(Forwarder("wire"), 2)
    h.forwarder.add_stage(FunctionStage(broken))
    try:
        h.send(0, frame(MAC[1], MAC[0], b"a" * 46))
        h.send(1, frame(MAC[0], MAC[1], b"b" * 46))
        with pytest.raises(StageError) as failed:
            h.forwarder.run()
        assert calls == [0]
        assert failed.value.first_batch
        assert stage_counters(h.forwarder, 0)["batches"] == 1
    finally:
        h.forwarder.close()
        for sock in h.inner + h.outer:
            sock.close()


def udp_frame(dport: int, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame from MAC[0] to MAC[1] (checksums are not looked at here)."""
    ip = bytes.fromhex("4500") + (28 + len(payload)).to_bytes(2, "big") + \
        bytes.fromhex("000000004011" "0000" "0a000001" "0a000002")
    udp = (40000).to_bytes(2, "big") + dport.to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + bytes(2)
    return frame(MAC[1], MAC[0], b"")[:12] + b"\x08\x00" + ip + udp + payload


def test_the_rate_limit_example_passes_a_burst_of_the_flow_and_all_else(
        harness: Callable[..., Harness]) -> None:
    stage = load_stage(f"{EXAMPLES / 'rate_limit.py'}:stage")      # UDP 5201: 1000/s, burst 100
    stage.rate = 1e-9                       # no refill during the test: exactly the burst passes
    h = harness("wire", 2, stage)
    limited = [udp_frame(5201, b"%03d" % k + bytes(20)) for k in range(150)]
    other = [udp_frame(5202, b"%03d" % k + bytes(20)) for k in range(30)]
    for data in limited + other:
        h.send(0, data)
    got = h.recv_all(1)
    assert got == limited[:100] + other
    assert stage_counters(h.forwarder)["dropped"] == 50


def test_the_rewrite_mac_example_rewrites_what_comes_in_on_its_port(
        harness: Callable[..., Harness]) -> None:
    stage = load_stage(f"{EXAMPLES / 'rewrite_mac.py'}:stage")     # tap0 -> 02:00:00:00:00:01
    h = harness("switch", 3, stage, names=["tap0", "tap1", "tap2"])
    h.forwarder.table.learn_mac(MAC[1], 1)
    h.forwarder.table.learn_mac(MAC[2], 2)
    from_tap0 = frame(MAC[2], MAC[0], b"a" * 46)        # to MAC[2], steered to MAC[1] (port 1)
    from_tap2 = frame(MAC[1], MAC[2], b"b" * 46)        # another port: untouched
    h.send(0, from_tap0)
    h.send(2, from_tap2)
    assert h.recv_all(1) == [frame(MAC[1], MAC[0], b"a" * 46), from_tap2]
    assert h.recv_all(2) == []


def test_the_mirror_example_copies_a_port_to_a_third_tap(
        harness: Callable[..., Harness], make_netns: Callable[[str], str], prefix: str) -> None:
    """Every frame in on tap0 also reaches the mirror tap: the kernel counts what it received
    there (the tap lives in a namespace of the test, up, no address)."""
    stage = load_stage(f"{EXAMPLES / 'mirror.py'}:stage")
    netns = make_netns("mi")
    stage.queue = in_netns(netns, lambda: open_queue(f"{prefix}mr", "tap", vnet_hdr=False))
    try:
        with IPRoute(netns=netns) as ipr:
            (index,) = ipr.link_lookup(ifname=f"{prefix}mr")
            ipr.link("set", index=index, state="up")
            before = dict(ipr.link("get", index=index)[0].get("IFLA_STATS64"))["rx_packets"]
        h = harness("wire", 2, stage, names=["tap0", "tap1"])
        sent = [frame(MAC[1], MAC[0], bytes([k]) * 46) for k in range(40)]
        for data in sent:
            h.send(0, data)
        h.send(1, frame(MAC[0], MAC[1]))        # from the other port: not mirrored
        assert h.recv_all(1) == sent            # the frames themselves go on as usual

        def mirrored() -> int:
            with IPRoute(netns=netns) as ipr:
                return int(dict(ipr.link("get", index=index)[0].get("IFLA_STATS64"))
                           ["rx_packets"]) - before

        wait_until(lambda: mirrored() >= 40, 30, "the mirror tap to receive 40 frames")
        assert mirrored() == 40 and (stage.copied, stage.lost) == (40, 0)
    finally:
        stage.detach()                          # what the engine calls when it closes
    assert stage.queue is None


def test_the_engine_attaches_its_stages_once_and_detaches_them_once_stopped(
        make_netns: Callable[[str], str], prefix: str) -> None:
    calls: list[tuple[str, ...]] = []

    class Recorder(Stage):
        def attach(self, port_names: list[str]) -> None:
            calls.append(("attach", *port_names))

        def detach(self) -> None:
            calls.append(("detach",))

        def __call__(self, batch: Batch) -> None:
            pass

    names = [f"{prefix}a0", f"{prefix}a1"]

    def run() -> None:
        ports = open_ports(names, queues=2)
        try:
            engine = Engine(ports, "wire", stages=[Recorder()])
            with engine:
                assert calls == [("attach", *names)]
            engine.close()                      # a second close detaches nothing again
        finally:
            for port in ports:
                port.close()

    run_in_netns(make_netns("ad"), run)
    assert calls == [("attach", *names), ("detach",)]


def test_stage_names_and_callables() -> None:
    def my_filter(batch: Batch) -> None:
        pass

    assert FunctionStage(my_filter).name == "my_filter"
    assert Stage(name="acl").name == "acl"
    assert type(load_stage(f"{EXAMPLES / 'drop_port.py'}:stage")).__name__ == "DropPort"
    with pytest.raises(TypeError, match="callable"):
        FunctionStage(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="printable"):
        Stage(name="")


def test_a_stage_whose_body_a_call_would_not_run_is_refused() -> None:
    async def coroutine(batch: Batch) -> None:
        pass

    class AsyncCall(Stage):
        async def __call__(self, batch: Batch) -> None:  # type: ignore[override]
            pass

    with pytest.raises(TypeError, match="coroutine function"):
        FunctionStage(coroutine)
    with pytest.raises(TypeError, match="coroutine function"):
        as_stage(AsyncCall())


@pytest.mark.parametrize(("spec", "message"), [
    ("nowhere.py:stage", "no file"),
    ("examples/stages/drop_port.py:nothing", "has no 'nothing'"),
    ("examples/stages/drop_port.py:DROP", "is not callable"),
    ("tapengine_no_such_module:stage", "No module named"),
    ("drop_port.py", "expected PATH.py:NAME or MODULE:NAME"),
])
def test_a_stage_that_cannot_be_loaded_is_one_line(spec: str, message: str) -> None:
    with pytest.raises(StageLoadError, match=message):
        load_stage(str(ROOT / spec) if spec.startswith("examples") else spec)


@pytest.mark.parametrize("command", ["forward", "switch"])
def test_a_stage_that_cannot_be_loaded_is_refused_before_touching_a_device(
        prefix: str, command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tapengine", command, f"{prefix}x0", f"{prefix}x1",
         "--stage", str(EXAMPLES / "drop_port.py:nothing")],
        capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "has no 'nothing'" in result.stderr
    assert not link_exists(f"{prefix}x0") and not link_exists(f"{prefix}x1")


@pytest.mark.parametrize(("source", "message"), [
    ("import sys\nsys.exit(4)\n", "SystemExit: 4"),
    ("raise SystemExit('bye')\n", "SystemExit: bye"),
    ("class stage(__import__('tapengine').Stage):\n"
     "    def __init__(self):\n        raise SystemExit\n", "cannot make stage"),
    (None, "is not a regular file"),           # a FIFO: opening it would wait for a writer
    ("/dev/zero", "is not a regular file"),    # a device: reading it would never end
    # called once per batch, their result ignored: their bodies would never run
    ("async def stage(batch):\n    pass\n", "is a coroutine function"),
    ("def stage(batch):\n    yield 1\n", "is a generator function"),
    ("async def stage(batch):\n    yield 1\n", "is an async generator function"),
    ("class stage(__import__('tapengine').Stage):\n"
     "    async def __call__(self, batch):\n        pass\n", "is a coroutine function"),
], ids=["sys.exit(4)", "SystemExit(bye)", "exit in __init__", "fifo", "device", "async def",
        "generator", "async generator", "async __call__"])
def test_a_stage_that_cannot_be_run_is_one_line_and_exit_code_1(
        prefix: str, tmp_path: Path, source: str | None, message: str) -> None:
    """The module's own sys.exit() is a load failure too, not the command's exit."""
    path = str(tmp_path / "stage.py")
    if source is None:
        os.mkfifo(path)
    elif source.startswith("/dev/"):
        path = source
    else:
        Path(path).write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "tapengine", "forward", f"{prefix}x0", f"{prefix}x1",
         "--stage", f"{path}:stage"],
        capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and f"stage '{path}:stage'" in result.stderr
    assert message in result.stderr, result.stderr
    assert not link_exists(f"{prefix}x0")


# -- the command line, with the kernel's sockets in two namespaces ---------------------------


forward_cli = clitest.cli      # tapengine on new taps, each in its own namespace (10.77.0.k)


def udp_socket(netns: str, address: tuple[str, int]) -> socket.socket:
    sock = in_netns(netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


@pytest.mark.parametrize("queues", [1, 2])
def test_forward_with_drop_port_drops_exactly_the_blocked_udp_flow(
        forward_cli: Callable[..., tuple], queues: int) -> None:
    """Two workers (two queues) call the same Python stage object, one at a time."""
    proc, line, (a, b) = forward_cli("forward", 2, "--stage",
                                     str(EXAMPLES / "drop_port.py") + ":stage", "--json",
                                     "--queues", str(queues))
    add_neighbor(a, b)
    add_neighbor(b, a)
    assert line.startswith("forwarding ")
    count = 200
    blocked = udp_socket(b.netns, (b.ip, 9))
    other = udp_socket(b.netns, (b.ip, 10))
    sender = in_netns(a.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    with blocked, other, sender:
        payloads = [os.urandom(100) for _ in range(count)]
        for payload in payloads:            # the blocked flow first: it would arrive first
            sender.sendto(payload, (b.ip, 9))
        for payload in payloads:
            sender.sendto(payload, (b.ip, 10))
        other.settimeout(30)
        assert [other.recv(2048) for _ in payloads] == payloads
        blocked.setblocking(False)
        with pytest.raises(BlockingIOError):
            blocked.recv(2048)
    sent, received, nbytes = tcp_transfer(a, b, 1 << 20)
    assert (received, nbytes) == (sent, 1 << 20)
    code, out, err = clitest.stop(proc)
    assert code == 0, err
    final = json.loads(out)
    (stage,) = final["stages"]
    assert stage["name"] == "drop_port" and stage["dropped"] == count
    ports = {port["ifname"]: port for port in final["ports"]}
    assert ports[a.ifname]["drops"] == {"filtered": count}


RAISES_LATER = """
calls = 0

def stage(batch):
    global calls
    calls += 1
    if calls == CALLS:
        raise RuntimeError("the stage gave up")
"""


@pytest.mark.parametrize("calls", [1, 2], ids=["first batch", "later"])
def test_forward_stops_with_exit_code_3_when_a_stage_raises(
        forward_cli: Callable[..., tuple], tmp_path: Path, calls: int) -> None:
    path = tmp_path / "raises.py"
    path.write_text(RAISES_LATER.replace("CALLS", str(calls)))
    proc, _, (a, b) = forward_cli("forward", 2, "--stage", f"{path}:stage")
    sender = in_netns(a.netns, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        # a datagram every few ms until tapengine stops: the stage gets its batches one by one
        # or together, and raises on the first or second call either way
        def stopped() -> bool:
            if proc.poll() is not None:
                return True
            with contextlib.suppress(OSError):  # the tap vanishes as tapengine exits
                sender.sendto(b"x", (b.ip, 9))
            return False

        wait_until(stopped, 60, "tapengine to stop after the stage raised")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    last = err.strip().splitlines()[-1]
    assert "stage 'stage' raised RuntimeError: the stage gave up" in last
    if calls == 1:
        assert "on its first batch" in last and "Traceback" not in err
    else:
        assert "Traceback" in err and "raises.py" in err
