"""The README's Python examples run as shown: each is read from README.md itself, so an edit that
breaks one fails here."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tapengine.netns import run_in_netns

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_block(section: str) -> str:
    """The first ```python block after the heading ``section``."""
    start = README.index(section)
    match = re.search(r"```python\n(.*?)```", README[start:], re.S)
    assert match, f"no python block after {section!r}"
    return match.group(1)


def test_the_packet_ring_session_runs_as_shown() -> None:
    block = python_block("### The packet ring")
    test = doctest.DocTestParser().get_doctest(block, {}, "README ring", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 5


def test_the_batched_io_example_runs_on_a_tap(make_netns: Callable[[str], str]) -> None:
    netns = make_netns("r")
    code = python_block("### Batched I/O on tun/tap queues")
    run_in_netns(netns, exec, code, {})  # creates tap0 there, gone with its fd


def test_the_udp_port_example_sends_a_tun_packet_as_one_datagram(
        make_netns: Callable[[str], str]) -> None:
    netns = make_netns("u")
    with IPRoute(netns=netns) as ipr:     # the example's sockets talk over the loopback
        ipr.link("set", index=1, state="up")
    code = python_block("### UDP socket ports")
    run_in_netns(netns, exec, code, {})  # tun0 and the sockets live there; gone with the fds


@pytest.mark.parametrize("fallback", [False, True], ids=["default", "TAPENGINE_NO_URING"])
def test_the_io_uring_example_receives_a_packet(fallback: bool) -> None:
    """With io_uring, and with the readv/writev fallback it promises when io_uring is off."""
    snippet = textwrap.indent(python_block("### io_uring"), "    ")
    program = (
        "import socket, tapengine\n"
        "sender, fd = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "fd.setblocking(False)\n"
        "sender.send(b'x' * 60)\n"
        "with tapengine.PacketRing(64, 2048) as ring:\n"
        f"{snippet}"
        "    assert n == 1 and bytes(ring.frames[ring.head][:60]) == b'x' * 60, n\n"
        "    print(type(io).__name__)\n"
    )
    env = dict(os.environ)
    env.pop("TAPENGINE_NO_URING", None)
    if fallback:
        env["TAPENGINE_NO_URING"] = "1"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env=env, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    if fallback:
        assert result.stdout.strip() == "ReadvIO"


def test_the_python_stage_example_runs_on_two_taps(make_netns: Callable[[str], str]) -> None:
    netns = make_netns("st")
    code = python_block("### Writing a stage")
    run_in_netns(netns, exec, code, {"__name__": "readme_stage"})  # tap0/tap1 gone with the fds


def test_the_cython_stage_example_builds_and_rewrites_frames(tmp_path: Path) -> None:
    """The README's Cython stage, built with ``cythonize -i`` as it says, in a forwarder."""
    start = README.index("### Writing a stage")
    match = re.search(r"```cython\n(.*?)```", README[start:], re.S)
    assert match, "no cython block in 'Writing a stage'"
    (tmp_path / "mac_rewrite.pyx").write_text(match.group(1))
    cythonize = Path(sys.executable).parent / "cythonize"
    env = {**os.environ, "CFLAGS": "-O0"}     # a quick compile: the test checks behaviour
    build = subprocess.run([str(cythonize), "-i", "mac_rewrite.pyx"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    program = textwrap.dedent("""
        import socket, threading
        from mac_rewrite import RewriteDst
        from tapengine import Forwarder, PacketRing
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
        forwarder = Forwarder("wire")
        for inner, outer in pairs:
            inner.setblocking(False)
            outer.settimeout(30)
            forwarder.add_port(inner.fileno(), PacketRing(64, 2048))
        forwarder.add_stage(RewriteDst(bytes.fromhex("020000000009")))
        thread = threading.Thread(target=forwarder.run)
        thread.start()
        frame = bytes.fromhex("020000000002020000000001") + b"\\x88\\xb5" + bytes(46)
        pairs[0][1].send(frame)
        print(pairs[1][1].recv(2048).hex())
        forwarder.stop()
        thread.join()
        forwarder.close()
    """)
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "020000000009" "020000000001" "88b5" + "00" * 46


def console_block(section: str, first_command: str) -> str:
    """The first ```console block after the heading ``section`` that starts with
    ``first_command``."""
    start = README.index(section)
    for match in re.finditer(r"```console\n(.*?)```", README[start:], re.S):
        if match.group(1).startswith(f"$ {first_command}"):
            return match.group(1)
    raise AssertionError(f"no console block starting with {first_command!r} after {section!r}")


# What varies from run to run in a console session: durations, rates and timestamps.
_VOLATILE = re.compile(r"\d[\d,.]* ?(?:[kMG]?bit/s|[kM]?pps|ms|s)\b|\d[\d,]*\.\d+")


def output_pattern(line: str) -> str:
    """A regex matching ``line`` with its durations, rates and timestamps as wildcards; counts
    stay exact."""
    parts, end = [], 0
    for match in _VOLATILE.finditer(line):
        parts.append(re.escape(line[end:match.start()]))
        parts.append(r"[\d,.]+ ?(?:[kMG]?bit/s|[kM]?pps|ms|s)" if match.group().endswith("s")
                     else r"[\d,.]+")
        end = match.end()
    parts.append(re.escape(line[end:]))
    return "".join(parts)


def session(block: str) -> list[tuple[str, list[str]]]:
    """``[(command, expected output lines)]`` of a console block (blank lines left out)."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    return steps


def test_the_capture_and_replay_session_runs_as_shown(prefix: str, privileged: None,
                                                      tmp_path: Path) -> None:
    """Every command of the README's capture lab, run in order with its names under the test's
    prefix: each prints what the README shows (up to durations, rates and timestamps), and the
    kernel of the lab received the 100 passes of the replay."""
    block = console_block("### Capture and replay", "tapengine netns add demo-lab")
    lab = f"{prefix}lab"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    background: list[subprocess.Popen[str]] = []

    def run(command: str) -> list[str]:
        """Its output lines, then those of a job started with ``&`` that it ended."""
        if command.endswith("&"):
            proc = subprocess.Popen(command[:-1], shell=True, cwd=tmp_path, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            background.append(proc)
            assert proc.stdout is not None
            return [proc.stdout.readline().rstrip("\n")]   # its ready line: it is reading now
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, text=True, timeout=120,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        lines = done.stdout.splitlines()
        for proc in background:
            rest, _ = proc.communicate(timeout=60)
            lines += rest.splitlines()
        background.clear()
        # tshark warns on stderr when run as root, as this test is; the README shows a user.
        return [line for line in lines if line.strip() and not line.startswith("Running as user")]

    def rx_packets() -> int:
        with IPRoute(netns=lab) as ipr:
            (link,) = ipr.link("get", ifname=f"{prefix}b")
        return int(link.get("IFLA_STATS64")["rx_packets"])

    try:
        for command, expected in session(block.replace("demo-", prefix)):
            before = rx_packets() if "--loop 100" in command else 0
            lines = run(command)
            assert len(lines) == len(expected), (command, lines, expected)
            for line, shown in zip(lines, expected, strict=True):
                assert re.fullmatch(output_pattern(shown), line), (command, line, shown)
            if "--loop 100" in command:
                assert rx_packets() - before == 100_000
    finally:
        for proc in background:
            proc.kill()
            proc.communicate()
        subprocess.run(["ip", "netns", "del", lab], capture_output=True, check=False)
