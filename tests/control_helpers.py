"""Independent views of the machine for the control-plane tests: everything here asks ``ip``.

The code under test talks netlink through pyroute2; these helpers read the kernel's answer through
iproute2 instead, so a test compares two independent paths to the same kernel state.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any


def ip_json(*args: str, netns: str | None = None) -> Any:
    command = ["ip", "-j"] + (["-n", netns] if netns else []) + list(args)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LookupError(f"{' '.join(command)}: {result.stderr.strip()}")
    return json.loads(result.stdout or "[]")


def link(name: str, netns: str | None = None) -> dict[str, Any] | None:
    """``ip -d -j link show NAME`` (details included), or None if there is no such link."""
    try:
        (info,) = ip_json("-d", "link", "show", "dev", name, netns=netns)
    except LookupError:
        return None
    return info


def addresses(name: str, netns: str | None = None) -> set[str]:
    (info,) = ip_json("addr", "show", "dev", name, netns=netns)
    return {f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", [])}


def namespaces() -> set[str]:
    return {entry["name"] for entry in ip_json("netns", "list")}


def snapshot(prefix: str) -> dict[str, Any]:
    """Everything on the machine that carries ``prefix``: namespaces, with their links and
    addresses, and prefixed links (with addresses) in the root namespace. Counters excluded, so two
    snapshots compare equal when nothing was created, deleted or reconfigured."""

    def links(netns: str | None) -> list[Any]:
        found = []
        for info in ip_json("-d", "addr", "show", netns=netns):
            if netns is None and not info["ifname"].startswith(prefix):
                continue
            found.append({key: value for key, value in info.items() if key != "stats64"})
        return found

    mine = sorted(ns for ns in namespaces() if ns.startswith(prefix))
    return {"root": links(None), **{ns: links(ns) for ns in mine}}


def leftovers(prefix: str) -> list[str]:
    """Names with ``prefix`` anywhere: namespaces, and links in the root and in all namespaces."""
    found = sorted(ns for ns in namespaces() if ns.startswith(prefix))
    for ns in [None, *namespaces()]:
        with contextlib.suppress(LookupError):  # a namespace of another test vanished meanwhile
            found += [f"{ns}/{i['ifname']}" for i in ip_json("link", "show", netns=ns)
                      if i["ifname"].startswith(prefix)]  # fmt: skip
    return found


def tapengine(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "tapengine", *args], capture_output=True, text=True, check=False,
        timeout=60, **kwargs,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tapengine "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def remove_everything(prefix: str) -> None:
    """Test finalizer: delete, with ``ip``, every namespace and root link carrying ``prefix``."""
    assert len(prefix) >= 8, "a test prefix is 'te' + 6 hex digits"
    for ns in namespaces():
        if ns.startswith(prefix):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    for info in ip_json("link", "show"):
        if info["ifname"].startswith(prefix):
            subprocess.run(["ip", "link", "del", info["ifname"]], check=False, capture_output=True)
