"""A single-valued flag given twice is refused while parsing (``StoreOnce``): ``--udp A --udp B``
or ``--vxlan 42 --vxlan 43`` silently ran with the last one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fwdnet import link_exists


@pytest.mark.parametrize("options", [
    ["forward", "--tun", "--udp", "10.77.0.1:1", "--udp", "10.77.0.2:2"],
    ["forward", "--tun", "--udp", "10.77.0.1:1", "--peer", "10.77.0.2:2",
     "--peer", "10.77.0.3:2"],
    ["switch", "--vxlan", "42", "--vxlan", "43", "--local", "10.77.0.1", "--remote", "10.77.0.2"],
    ["switch", "--vxlan", "42", "--local", "10.77.0.1", "--local", "10.77.0.3",
     "--remote", "10.77.0.2"],
    ["switch", "--vxlan", "42", "--local", "10.77.0.1", "--remote", "10.77.0.2",
     "--dstport", "4789", "--dstport", "8472"],
], ids=["--udp", "--peer", "--vxlan", "--local", "--dstport"])
def test_a_single_valued_flag_given_twice_is_a_usage_error(prefix: str,
                                                           options: list[str]) -> None:
    command, *rest = options
    flag = next(word for word in rest if rest.count(word) == 2)
    result = subprocess.run([sys.executable, "-m", "tapengine", command, f"{prefix}x0", *rest],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"argument {flag}: given twice: give it once" in result.stderr
    assert not link_exists(f"{prefix}x0")


def test_ctrl_c_while_the_command_loads_is_one_line_and_exit_code_130() -> None:
    """SIGINT in the first second (the command's modules still loading) gave a traceback."""
    # The default Ctrl-C handler explicitly: a process started in the background by a
    # non-interactive shell (as CI may start us) inherits SIGINT ignored, and Python then installs
    # no handler. ``--version`` makes a run that was not interrupted end at once, creating nothing.
    program = ("import os, signal, sys\n"
               "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "import tapengine.cli as cli\n"
               "build = cli.build_parser\n"
               "def interrupted():\n"
               "    os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C, as the modules load\n"
               "    return build()\n"
               "cli.build_parser = interrupted\n"
               "sys.exit(cli.main(['--version']))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 130, result.stderr
    assert result.stderr == "tapengine: interrupted while starting\n"
