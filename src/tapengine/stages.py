"""Helpers for stages: finding one by name, and reading a batch's headers without a Python loop.

``load_stage("PATH.py:NAME")`` (a Python file) or ``load_stage("MODULE:NAME")`` (an importable
module), as ``tapengine forward --stage`` takes it: ``NAME`` is a ``Stage`` object, a ``Stage``
subclass (made with no arguments) or any callable taking a ``Batch`` (wrapped in a
``FunctionStage`` named ``NAME``). Every way this can fail is a ``StageLoadError`` with one line
saying what and why.

``l4_ports(batch)`` gives the IP protocol and the UDP/TCP ports of every packet of a batch as
numpy arrays, so that a stage says ``batch.verdict[(proto == UDP) & (dport == 53)] = DROP``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from tapengine._stage import FunctionStage, Stage, check_synchronous
from tapengine.errors import TapengineError


class StageLoadError(TapengineError, ValueError):
    """A ``--stage`` that cannot be loaded, is not callable, or cannot be made."""


def split_spec(spec: str) -> tuple[str, str]:
    """``(target, name)`` of ``PATH.py:NAME`` or ``MODULE:NAME``; StageLoadError otherwise."""
    target, colon, name = spec.rpartition(":")
    if not colon or not target or not name.isidentifier():
        raise StageLoadError(
            f"invalid stage {spec!r}: expected PATH.py:NAME or MODULE:NAME "
            "(e.g. examples/stages/drop_port.py:stage)")
    return target, name


def _load_module(target: str, spec: str) -> ModuleType:
    if target.endswith(".py") or os.sep in target:
        if not os.path.exists(target):
            raise StageLoadError(f"cannot load stage {spec!r}: no file {target!r}")
        if not os.path.isfile(target):   # a FIFO or a device would block or never end
            raise StageLoadError(f"cannot load stage {spec!r}: {target!r} is not a regular file")
        module_name = "tapengine_stage_" + os.path.splitext(os.path.basename(target))[0]
        found = importlib.util.spec_from_file_location(module_name, target)
        if found is None or found.loader is None:
            raise StageLoadError(f"cannot load stage {spec!r}: {target!r} is not a Python file")
        module = importlib.util.module_from_spec(found)
        sys.modules[module_name] = module    # dataclasses and pickling look modules up there
        try:
            found.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]     # a half-run module is not left for the next load
            raise
        return module
    return importlib.import_module(target)


def _failure(err: BaseException) -> str:
    """``Type: message`` of what the user's code raised (``Type`` alone when it says nothing)."""
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def load_stage(spec: str) -> Stage:
    """The stage ``spec`` names (see the module's docstring)."""
    target, name = split_spec(spec)
    try:
        module = _load_module(target, spec)
    except StageLoadError:
        raise
    # The user's code: any error is a load failure, said in one line; its sys.exit() too, which
    # would otherwise end the command silently with the module's exit code.
    except (Exception, SystemExit) as err:
        raise StageLoadError(f"cannot load stage {spec!r}: {_failure(err)}") from err
    obj: Any = getattr(module, name, None)
    if obj is None:
        raise StageLoadError(f"cannot load stage {spec!r}: {target} has no {name!r}")
    if isinstance(obj, type) and issubclass(obj, Stage):
        try:
            obj = obj()
        except (Exception, SystemExit) as err:
            raise StageLoadError(f"cannot make stage {spec!r}: {_failure(err)}") from err
    try:
        check_synchronous(obj)
    except TypeError as err:
        raise StageLoadError(f"cannot load stage {spec!r}: {err}") from None
    if isinstance(obj, Stage):
        return obj
    if not callable(obj):
        raise StageLoadError(f"stage {spec!r} is not callable: it is a {type(obj).__name__} "
                             "(give a function taking a Batch, or a tapengine.Stage)")
    return FunctionStage(obj, name)


#: IP protocol numbers, as ``l4_ports`` reports them.
TCP, UDP = 6, 17

ETH_HLEN = 14
ETH_P_IPV4, ETH_P_IPV6 = 0x0800, 0x86DD
IPV6_HLEN = 40


def l4_ports(batch: Any) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint16],
                                  npt.NDArray[np.uint16]]:  # fmt: skip
    """``(proto, sport, dport)`` of every packet of ``batch``, vectorised (no Python loop).

    ``proto`` is the IPv4 protocol or the IPv6 next header (0 for anything that is not IP);
    ``sport``/``dport`` are the first two 16-bit words after the IP header (the ports, for UDP
    and TCP). Ethernet frames (a tap) and IP packets (a tun) alike; IPv6 extension headers are
    not followed (their packets show the extension header's number as ``proto``).

    A batch of IPv4 packets without options (or of IPv6 packets) takes a fast path of a few numpy
    operations whose results are views of the frames (read them, do not write them); a mixed
    batch takes the general path (a dozen operations). Each numpy call costs a microsecond or
    more, whatever the batch size: a stage pays per batch, not per packet.
    """
    frames = batch.frames
    base = ETH_HLEN if batch.l2 else 0
    if batch.l2:    # ethertype, version and header length in one 24-bit word
        kind = frames[:, 12:16].view(">u4")[:, 0] >> 8
        ipv4_plain = (ETH_P_IPV4 << 8) | 0x45
    else:
        kind = frames[:, 0]
        ipv4_plain = 0x45
    if (kind == ipv4_plain).all():
        ports = frames[:, base + 20:base + 24].view(">u2")
        return frames[:, base + 9], ports[:, 0], ports[:, 1]
    ipv6 = (kind >> 4 == (ETH_P_IPV6 << 4) | 6) if batch.l2 else (kind >> 4 == 6)
    if ipv6.all():
        ports = frames[:, base + 40:base + 44].view(">u2")
        return frames[:, base + 6], ports[:, 0], ports[:, 1]
    return _l4_ports_mixed(frames, base, batch.l2)


def _l4_ports_mixed(frames: npt.NDArray[np.uint8], base: int, l2: bool) -> tuple[
        npt.NDArray[np.uint8], npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:  # fmt: skip
    rows = np.arange(len(frames))
    if l2:
        ethertype = frames[:, 12:14].view(">u2")[:, 0]
        ipv4 = (ethertype == ETH_P_IPV4) & ((frames[:, base] >> 4) == 4)
        ipv6 = ethertype == ETH_P_IPV6
    else:
        version = frames[:, 0] >> 4
        ipv4, ipv6 = version == 4, version == 6
    ihl = (frames[:, base] & 0x0F).astype(np.intp) * 4
    l4 = np.minimum(np.where(ipv4, base + ihl, base + IPV6_HLEN), frames.shape[1] - 4)
    proto = np.where(ipv4, frames[:, base + 9], np.where(ipv6, frames[:, base + 6], 0))
    sport = (frames[rows, l4].astype(np.uint16) << 8) | frames[rows, l4 + 1]
    dport = (frames[rows, l4 + 2].astype(np.uint16) << 8) | frames[rows, l4 + 3]
    return proto.astype(np.uint8), sport, dport
