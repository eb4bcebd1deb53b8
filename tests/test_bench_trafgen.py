"""The bench scripts' traffic generator ends with everything it forked (bench/compare_forward.py
``trafgen``, used by every bench script that runs trafgen): an orphaned trafgen worker kept
sending for hours and took a CPU from every later test and figure."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from netutil import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from compare_forward import trafgen


def live_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are not zombies (the kernel's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:             # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


@pytest.mark.skipif(shutil.which("trafgen", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
                    is None, reason="trafgen (netsniff-ng) is not installed")
def test_trafgen_and_its_worker_end_even_when_it_does_not_stop_when_asked(
        make_netns: Callable[[str], str], tmp_path: Path) -> None:
    netns = make_netns("tg")
    with IPRoute(netns=netns) as ipr:
        ipr.link("set", index=1, state="up")
    conf = tmp_path / "frame.cfg"
    conf.write_text("{ " + ", ".join(["0x02"] * 12 + ["0x88", "0xb5"] + ["0x00"] * 46) + " }\n")
    with trafgen(netns, "-o", "lo", "-i", str(conf), "-P", "1", "--no-sock-mem", "-Q", "-C",
                 grace=0.5) as gen:  # fmt: skip
        wait_until(lambda: len(live_members(gen.pid)) >= 2, 30, "trafgen and its worker")
        os.kill(gen.pid, signal.SIGSTOP)    # a parent that does not end when asked
    assert live_members(gen.pid) == []
