"""Removing what tapengine made, and only that: ``tapengine cleanup`` and ``topology down``.

Both first make a plan: every namespace and link they would remove, each looked up in the kernel
and classified (``Target``). A plan that touches anything tapengine did not create (no mark, see
``tapengine.marks``), or a link whose kind is not the one declared, is refused as a whole before
anything is removed, unless ``force`` is given; physical devices, ``lo`` and the namespace
tapengine itself runs in are refused even then. So a wrong prefix or a wrong topology file
changes nothing on the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

from tapengine import devices, marks
from tapengine.errors import DeviceNotFoundError, NotOwnedError
from tapengine.netns import (
    current_netns,
    delete_netns,
    list_netns,
    netns_exists,
    netns_is_ours,
    netns_path,
)
from tapengine.validate import check_prefix

#: Kinds of link tapengine creates; anything else (a physical card, lo, ifb, vxlan...) never is.
OUR_KINDS = frozenset({"tap", "tun", "veth", "bridge"})
#: How many refused objects an error message names before it says "and N more".
SHOWN = 8


@dataclass(frozen=True)
class Target:
    """One namespace (``kind == "netns"``) or link that a plan would remove, as it exists now."""

    name: str
    netns: str | None  # the namespace a link is in; None for namespaces and root-namespace links
    kind: str
    ours: bool
    expected_kind: str | None = None  # what the description declared, if anything

    @property
    def label(self) -> str:
        if self.kind == "netns":
            return f"namespace {self.name}"
        return self.name if self.netns is None else f"{self.netns}/{self.name}"

    def never_removed(self) -> str | None:
        """Why this may never be removed, even with force; None if it may be."""
        if self.kind == "netns":
            if self.name == current_netns():
                return "is the namespace tapengine runs in"
            return None
        if self.kind == "device":
            return "is a physical device"
        if self.kind == "loopback" or self.name == "lo":
            return "is the loopback device"
        return None

    def wrong_kind(self) -> str | None:
        """Why this is not removed without force although ours; None if of the declared kind."""
        if self.ours and self.expected_kind is not None and self.kind != self.expected_kind:
            return f"{self.label} is a {self.kind}, not the {self.expected_kind} the file declares"
        return None


def inspect_netns(name: str) -> Target | None:
    """The namespace ``name`` as a ``Target``; None if it does not exist."""
    if not netns_exists(name):
        return None
    if not os.path.ismount(netns_path(name)):
        # A mount point without a namespace (a creation cut short): nothing lives there.
        return Target(name, None, "netns", ours=True)
    try:
        ours = netns_is_ours(name)
    except OSError:
        ours = False  # cannot look inside: treat as not ours
    return Target(name, None, "netns", ours or marks.interrupted("netns", name))


def inspect_link(name: str, netns: str | None, expected_kind: str | None = None) -> Target | None:
    """Link ``name`` of ``netns`` as a ``Target``; None if it (or its namespace) does not exist."""
    try:
        link = devices.get_link(name, netns)
        ours = link.is_ours() or marks.interrupted(link.kind, name, netns)
    except DeviceNotFoundError:
        return None
    return Target(name, netns, link.kind, ours, expected_kind)


def check_plan(targets: Iterable[Target], *, force: bool, what: str) -> None:
    """Raise ``NotOwnedError`` naming every target that must not be removed; nothing is removed.

    ``what`` names the request in the message (``"prefix 'te'"``, ``"topology.toml"``).
    """
    targets = list(targets)
    never = [f"{t.label} {reason}" for t in targets if (reason := t.never_removed())]
    if never:
        raise NotOwnedError(
            errno.EPERM,
            f"refusing {what}: {_listed(never)}; tapengine never removes those. "
            "Nothing was removed.",
        )
    if force:
        return
    problems = []
    foreign = [f"{t.label} ({t.kind})" for t in targets if not t.ours]
    if foreign:
        verb = "it is" if len(foreign) == 1 else "they are"
        problems.append(f"not created by tapengine: {_listed(foreign)}; left as {verb}")
    problems += [reason for t in targets if (reason := t.wrong_kind())]
    if problems:
        raise NotOwnedError(
            errno.EPERM,
            f"refusing {what}: {'; '.join(problems)}. Nothing was removed "
            "(--force removes such things anyway).",
        )


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"


def remove(target: Target) -> None:
    """Remove one checked target; one that vanished meanwhile is not an error."""
    if target.kind == "netns":
        delete_netns(target.name, force=True)
        marks.forget("netns", target.name)
    else:
        with contextlib.suppress(DeviceNotFoundError):  # gone, or its namespace went away
            devices.delete_link(target.name, netns=target.netns, force=True)
        marks.forget(target.kind, target.name, target.netns)


def cleanup_prefix(
    prefix: str, *, dry_run: bool = False, force: bool = False
) -> dict[str, list[str]]:
    """Remove every namespace and link whose name starts with ``prefix`` and that tapengine
    created, in the current namespace and in all named namespaces (links inside a namespace that
    is removed go with it). Returns what was (or, with ``dry_run``, would be) removed.

    Refused as a whole, removing nothing, if the prefix matches anything tapengine did not create
    (unless ``force``) or anything never removed (a physical device, ``lo``, the namespace we run
    in): a prefix must name our leftovers and nothing else.
    """
    check_prefix(prefix)
    namespaces = [t for ns in list_netns() if ns.startswith(prefix) if (t := inspect_netns(ns))]
    doomed = {t.name for t in namespaces}
    links: list[Target] = []
    for scope in [None, *(ns for ns in list_netns() if ns not in doomed)]:
        try:
            found = devices.list_links(scope)
        except DeviceNotFoundError:
            continue  # the namespace vanished meanwhile
        for link in found:
            if link.name.startswith(prefix) and (target := inspect_link(link.name, scope)):
                links.append(target)
    check_plan([*namespaces, *links], force=force, what=f"prefix {prefix!r}")
    if not dry_run:
        for target in [*links, *namespaces]:
            remove(target)
    return {"links": [t.label for t in links], "netns": [t.name for t in namespaces]}
