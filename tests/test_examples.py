"""The examples the README shows run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_udp_echo_answers_the_kernels_socket(privileged: None) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "udp_echo.py")],
        capture_output=True, text=True, timeout=60, check=True,
    )
    replies = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert replies == [f"'hello {i}' from 10.77.0.2:7" for i in range(8)]
