"""--user: parsing who to become, and gen/sink dropping every privilege once the device is open
(the kernel's view in /proc/PID/status is the witness). forward's case is in test_cli_forward."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from netutil import stats64, wait_until
from tapengine.errors import InvalidValueError
from tapengine.privileges import Identity, parse_identity


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("nobody", (65534, 65534)), ("65534", (65534, 65534)), ("nobody:nogroup", (65534, 65534)),
     ("1234:5678", (1234, 5678)), ("daemon:0", (1, 0))],
)  # fmt: skip
def test_user_and_group_by_name_or_number(spec: str, expected: tuple[int, int]) -> None:
    assert parse_identity(spec) == Identity(*expected, spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("root", "becoming root"), ("0", "becoming root"), ("0:65534", "becoming root"),
     ("", "USER or USER:GROUP"), ("nobody:", "USER or USER:GROUP"), (":x", "USER or USER:GROUP"),
     ("a:b:c", "USER or USER:GROUP"), ("no-such-user-te", "no user named"),
     ("nobody:no-such-group-te", "no group named"), ("4294967295", "user id"),
     ("9" * 400, "user id")],
)  # fmt: skip
def test_who_to_become_is_refused_clearly(spec: str, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        parse_identity(spec)


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as file:
        return dict(line.rstrip("\n").split(":\t", 1) for line in file if ":\t" in line)


def test_gen_as_nobody_writes_with_no_capability(
    make_netns: Callable[[str], str], prefix: str
) -> None:
    netns = make_netns("g")
    tap = prefix + "g"
    run = [sys.executable, "-m", "tapengine"]
    subprocess.run([*run, "tap", "add", tap, "--netns", netns, "--up"], check=True)
    gen = subprocess.Popen(
        [*run, "gen", tap, "--netns", netns, "--rate", "2kpps", "--duration", "60", "--json",
         "--user", "nobody"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        dropped = wait_until(
            lambda: gen.poll() is None and status(gen.pid)["Uid"].split() == ["65534"] * 4,
            60, "gen to become nobody",
        )  # fmt: skip
        assert dropped
        now = status(gen.pid)
        assert int(now["CapEff"], 16) == 0 and now["NoNewPrivs"].strip() == "1"
        # the kernel's own counter: frames written by the process after it became nobody
        wait_until(lambda: stats64(tap, netns)["rx_packets"] >= 100, 60,
                   "frames from the unprivileged generator")  # fmt: skip
        gen.send_signal(signal.SIGTERM)
        out, err = gen.communicate(timeout=60)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.communicate()
    result = json.loads(out)
    assert result["packets"] >= 100 and result["interrupted"], (result, err)
