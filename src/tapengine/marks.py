"""How tapengine recognises what it created, so that it never removes anything else.

Every link tapengine creates (tap, tun, both ends of a veth, bridge) carries the interface alias
``OWNER_MARK`` (``IFLA_IFALIAS``: ``ip link show`` prints it as ``alias tapengine``), and every
network namespace it creates carries the same alias on its loopback device. The marks live in the
kernel with the objects themselves: they survive a crash or ``kill -9`` (so ``tapengine cleanup``
still recognises the leftovers), move with a link into another namespace, and vanish with the
object (a namespace deleted by someone else and made again under the same name is not ours).

``tapengine cleanup`` and ``topology down`` remove only marked objects of the declared kind;
anything else is reported and left as it is unless ``--force`` is given. Physical devices, ``lo``
and the namespace tapengine itself runs in are never removed, ``--force`` or not.

A mark can only be set once the object exists, and the kernel has no way to create a namespace,
veth or bridge with its alias already set; a ``kill -9`` between the two steps would leave an
unmarked object that nobody may remove. So each creation first writes an *intent*, a small file in
``INTENT_DIR`` naming the object and the creating process, and removes it once the mark is set.
An intent whose process is dead marks its object as ours: ``cleanup`` removes both. (Taps need no
intent: a new tap lives only as long as its fd until it is marked and made persistent.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

OWNER_MARK = "tapengine"
INTENT_DIR = "/run/tapengine/creating"


def _intent_path(kind: str, name: str, netns: str | None) -> str:
    # Interface names cannot contain ':' or '/', namespace names cannot contain '/', and the kind
    # is one of ours: the key is unambiguous.
    key = f"{kind}:{name}" if kind == "netns" else f"{kind}:{netns or ''}:{name}"
    return os.path.join(INTENT_DIR, key)


@contextlib.contextmanager
def creating(kind: str, name: str, netns: str | None = None) -> Iterator[None]:
    """Hold an intent for the creation of ``kind`` ``name`` (in ``netns``) during the body; the
    body creates and marks it. The intent is removed on return or on an exception."""
    os.makedirs(INTENT_DIR, mode=0o700, exist_ok=True)
    path = _intent_path(kind, name, netns)
    with open(path, "w") as file:
        file.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def interrupted(kind: str, name: str, netns: str | None = None) -> bool:
    """Whether a tapengine process died while creating ``kind`` ``name`` (its intent remains)."""
    try:
        with open(_intent_path(kind, name, netns)) as file:
            pid = int(file.read().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's process
    return False  # still running: its creation is not interrupted yet


def forget(kind: str, name: str, netns: str | None = None) -> None:
    """Drop the intent of an object that was removed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_intent_path(kind, name, netns))
