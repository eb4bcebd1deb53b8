"""``python -m tapengine.nsexec NETNS -- PROGRAM``: a program run inside a namespace, no ``ip``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tapengine.errors import InvalidNameError
from tapengine.nsexec import nsexec_argv


def nsexec(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(nsexec_argv(netns, argv), capture_output=True, text=True, timeout=60)


def test_argv_runs_the_launcher_module_with_this_interpreter() -> None:
    assert nsexec_argv("tens", ["iperf3", "-s"]) == [
        sys.executable, "-m", "tapengine.nsexec", "tens", "--", "iperf3", "-s"]  # fmt: skip


def test_bad_namespace_names_and_empty_programs_are_refused_before_running() -> None:
    with pytest.raises(InvalidNameError):
        nsexec_argv("bad/name", ["true"])
    with pytest.raises(ValueError, match="no program"):
        nsexec_argv("tens", [])


@pytest.mark.parametrize("args", [[], ["tens"], ["tens", "true"], ["tens", "--"]])
def test_bad_usage_says_how_to_call_it(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "tapengine.nsexec", *args],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m tapengine.nsexec NETNS -- PROGRAM")


def test_a_missing_namespace_is_a_one_line_error() -> None:
    result = nsexec("tenonexistent0", "true")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "'tenonexistent0' does not exist" in result.stderr


@pytest.mark.privileged
def test_the_program_runs_inside_the_namespace_with_the_launchers_pid(
        make_netns: Callable[[str], str]) -> None:
    netns = make_netns("x")
    code = "import os; print(os.getpid(), os.stat('/proc/self/ns/net').st_ino)"
    proc = subprocess.Popen(nsexec_argv(netns, [sys.executable, "-c", code]),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = proc.communicate(timeout=60)
    pid, inode = map(int, out.split())
    assert pid == proc.pid                                    # exec, not a child process
    assert inode == os.stat(f"/run/netns/{netns}").st_ino
    assert inode != os.stat("/proc/self/ns/net").st_ino       # and the caller stayed put


@pytest.mark.privileged
def test_a_missing_program_is_a_one_line_error(make_netns: Callable[[str], str]) -> None:
    result = nsexec(make_netns("x"), "te-no-such-program")
    assert result.returncode == 127
    assert result.stderr.count("\n") == 1 and "'te-no-such-program'" in result.stderr
