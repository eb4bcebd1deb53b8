"""Dropping privileges once every fd is open: forwarding and counting need no capability.

Opening tun/tap queues needs ``CAP_NET_ADMIN``; reading and writing the open fds does not. So
``forward``, ``switch``, ``gen`` and ``sink`` take ``--user USER[:GROUP]``: after the devices are
open they become that user, with no supplementary groups, no capabilities left (the kernel clears
the permitted and effective sets when every uid leaves 0) and ``PR_SET_NO_NEW_PRIVS``, so nothing
they exec can gain any back. glibc applies the id change to every thread of the process.

``drop_privileges`` then checks ``/proc/self/status`` and refuses to go on if any capability is
still effective.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import grp
import os
import pwd
from dataclasses import dataclass

from tapengine.errors import InvalidValueError, PrivilegeError
from tapengine.validate import MAX_ID, parse_int, quote

PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class Identity:
    """Who to become: ``uid`` and ``gid``, and the text they were named by (for messages)."""

    uid: int
    gid: int
    name: str


def _user(text: str) -> pwd.struct_passwd | int:
    if text.isdigit():
        return parse_int(text, "user id", 0, MAX_ID)
    try:
        return pwd.getpwnam(text)
    except KeyError:
        raise InvalidValueError(f"no user named {quote(text)} (see /etc/passwd)") from None


def _group(text: str) -> int:
    if text.isdigit():
        return parse_int(text, "group id", 0, MAX_ID)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise InvalidValueError(f"no group named {quote(text)} (see /etc/group)") from None


def parse_identity(spec: str) -> Identity:
    """``USER[:GROUP]`` (names or numbers) -> ``Identity``; the group defaults to the user's
    primary group (a numeric user with no group becomes that number as its group too)."""
    if not isinstance(spec, str) or not spec or spec.count(":") > 1:
        raise InvalidValueError(f"invalid user {quote(spec)}: expected USER or USER:GROUP")
    user_text, _, group_text = spec.partition(":")
    if not user_text or (":" in spec and not group_text):
        raise InvalidValueError(f"invalid user {quote(spec)}: expected USER or USER:GROUP")
    user = _user(user_text)
    uid, primary = (user, user) if isinstance(user, int) else (user.pw_uid, user.pw_gid)
    gid = _group(group_text) if group_text else primary
    if uid == 0:
        raise InvalidValueError(
            f"invalid user {quote(spec)}: becoming root would keep every privilege"
        )
    return Identity(uid, gid, spec)


def effective_capabilities() -> int:
    """The ``CapEff`` mask of this process, from ``/proc/self/status``."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise RuntimeError("/proc/self/status has no CapEff line")  # pragma: no cover


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good: no groups, no capabilities, no new privileges by exec."""
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot set no_new_privs: {os.strerror(err)}")
    try:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except PermissionError as err:
        raise PrivilegeError(
            err.errno or errno.EPERM,
            f"cannot become {identity.name!r}: {err.strerror}; dropping privileges needs "
            "CAP_SETUID and CAP_SETGID (run as root)",
        ) from None
    left = effective_capabilities()
    if left:
        raise PrivilegeError(
            errno.EPERM, f"still holding capabilities {left:#x} after becoming {identity.name!r}"
        )
