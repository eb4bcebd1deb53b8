"""The engine: ports, one worker thread per queue, start/stop, and stats snapshots with rates.

A ``Port`` is a tun/tap device with one open queue per worker. ``Engine(ports, mode)`` runs one
``Forwarder`` (the C loop of ``tapengine._forward``) per queue index: worker *k* serves queue *k*
of every port, so a queue is never served by two threads (that would reorder TCP) and the kernel's
flow hash spreads flows over workers.

Switch mode with several queues: the workers share one ``MacTable``. Each worker holds the table's
mutex once per batch, for the learning and the lookups of the whole batch, never across a syscall;
so a station learned by any worker is known to all of them at once, and a reply arriving on another
queue is not flooded. (Per-worker tables would avoid the lock but flood every flow whose two
directions hash to different queues.)

Counters are read from the workers' live numpy arrays without stopping them; ``stats()`` sums
them over workers into an ``EngineStats`` snapshot, and ``EngineStats.rates(earlier)`` gives rates.

A worker that fails (its forwarder raises: every one of its ports went down, or epoll failed)
stops every other worker: the engine is not ``running`` any more, ``failure`` says why and
``stop()``/``close()`` raise it. A worker that does not stop when asked keeps everything it uses
open (``StuckWorkerError``): its forwarder owns dup()ed port fds, which stay open with it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np

from tapengine._forward import (
    COUNTER_NAMES,
    DROP_REASONS,
    HISTOGRAM_BUCKETS,
    MAX_COALESCE_USECS,
    Forwarder,
    MacTable,
)
from tapengine._gso import REASONS as GSO_REASONS
from tapengine._ring import MAX_SLOT_SIZE, PEER_DTYPE, PacketRing, slot_size_for
from tapengine._stage import STAGE_COUNTER_NAMES, Stage, as_stage
from tapengine._uring import UringIO
from tapengine._uring import available as uring_available
from tapengine.errors import DeviceNotFoundError, FlagMismatchError
from tapengine.netlink import IFF_UP, find_link, link_kind, netlink_errors, rtnl
from tapengine.tun import Mode, Offload, TunQueue, open_queue, open_queues
from tapengine.udpport import UdpPort
from tapengine.validate import MAX_TAP_QUEUES, MAX_TXQUEUELEN, check_float, check_int
from tapengine.vxlan import VxlanPort, format_vxlan

EngineMode = Literal["wire", "switch"]
IoBackend = Literal["readv", "uring"]
#: ``Engine(io=)``: a backend, or "auto" (the default): io_uring where this kernel lets us use it
#: (``tapengine._uring.available()``), else readv/writev. io_uring won every scenario of
#: bench/RESULTS.md, "The default backend" (issue 14).
IoChoice = Literal["auto", "readv", "uring"]

#: Offloads asked for by default: checksum, TCP segmentation (v4, v6, ECN), UDP segmentation.
DEFAULT_OFFLOAD = (
    Offload.CSUM | Offload.TSO4 | Offload.TSO6 | Offload.TSO_ECN | Offload.USO4 | Offload.USO6
)

#: Offloads with which the kernel hands over superframes (up to 64 KiB): a port that negotiated
#: any of them needs 64 KiB slots; others get slots sized from the MTU.
SUPERFRAME_OFFLOADS = Offload.TSO4 | Offload.TSO6 | Offload.UFO | Offload.USO4 | Offload.USO6

#: The txqueuelen ``open_port`` gives a device at least (the kernel's default is 1000). For a
#: tun/tap it bounds the packets the kernel holds for our fd; without offloads a TCP sender's
#: bursts overflow 1000 and every overflow is a retransmit; 2000 and up removed them all
#: (bench/RESULTS.md, "Larger queues").
DEFAULT_TXQUEUELEN = 5000

#: How long a worker waits for a batch after a wakeup that found only a few packets, in
#: microseconds (``Forwarder(coalesce_usecs=)``; 0: never): fewer wakeups per frame at moderate
#: rates, at most this much added latency (bench/RESULTS.md, "Wakeup coalescing").
DEFAULT_COALESCE_USECS = 0

#: Most ports of one switch (``MAX_PORTS`` of the forwarder, pyx/forward.pxd); a wire has two.
MAX_SWITCH_PORTS = 64
#: Most packets read from one port per pass of a worker.
MAX_BUDGET = 256
#: MAC table size bounds (the table is 4-way set-associative) and the longest ageing, seconds.
MIN_TABLE_SIZE, MAX_TABLE_SIZE = 4, 1 << 24
MAX_AGEING = 1e7

#: Counters reported per queue (per worker) in ``PortStats.queues``.
QUEUE_COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")

#: Drop reasons counted on the egress port (``tx.dropped``); the rest on the ingress port.
EGRESS_DROPS = ("full", "link_down", "port_down", "tx_error", "needs_segmentation")
INGRESS_DROPS = tuple(reason for reason in DROP_REASONS if reason not in EGRESS_DROPS)

_COL = {name: k for k, name in enumerate(COUNTER_NAMES)}


class StuckWorkerError(RuntimeError):
    """A forwarding worker did not stop when asked; what it uses was left open."""


def ring_memory(ring: PacketRing) -> dict[str, int]:
    """What one receive ring takes: its slots, slot size and bytes (slab with headroom and
    headers, lengths, offsets, peers)."""
    per_slot = ring.stride + 4 + 2 + PEER_DTYPE.itemsize  # uint32 length, uint16 offset, peer
    return {"slots": ring.nslots, "slot_size": ring.slot_size, "bytes": ring.nslots * per_slot}


def uring_entries(budget: int) -> int:
    """The io_uring size for a worker with this ``budget``: a power of two (the kernel's rule),
    at least 64 and at least ``budget``."""
    return 1 << (max(budget, 64) - 1).bit_length()


def offload_names(offload: Offload) -> list[str]:
    """``["csum", "tso4", ...]`` for the flags set in ``offload``."""
    return [flag.name.lower() for flag in Offload if flag & offload and flag.name]


class Port:
    """A tun/tap device served by the engine: its name and one open queue per worker.

    Owns its queues: ``close()`` (or leaving the ``with`` block) closes them, and a device the
    port created (non-persistent) disappears with them.
    """

    def __init__(self, name: str, queues: Sequence[TunQueue], txqueuelen: int = 0,
                 mtu: int | None = None) -> None:  # fmt: skip
        if not queues:
            raise ValueError(f"port {name!r} needs at least one open queue")
        self.name = name
        self.queues = list(queues)
        self.mode: Mode = queues[0].mode
        self.vnet_hdr = queues[0].vnet_hdr
        self.txqueuelen = txqueuelen        # what open_port found or set; 0: not looked at
        self.mtu = mtu                      # the device's MTU when opened; None: not looked at
        self.watch = LinkWatch(name)        # made here: in the namespace the queues were opened
        self._txqueuelen_before: int | None = None   # set when this port raised it

    def raise_txqueuelen(self, length: int) -> int:
        """Make the device's txqueuelen at least ``length``; ``restore_txqueuelen`` undoes it."""
        before = _get_txqueuelen(self.name)
        if before < length:
            _set_txqueuelen(self.name, length)
            if self._txqueuelen_before is None:
                self._txqueuelen_before = before
        self.txqueuelen = max(before, length)
        return self.txqueuelen

    def restore_txqueuelen(self) -> None:
        """Give the device back the txqueuelen it had before this port raised it (if it did).
        A device that is gone meanwhile is left alone."""
        if self._txqueuelen_before is None:
            return
        with contextlib.suppress(OSError):  # best effort on the way out; a device gone is fine
            _set_txqueuelen(self.name, self._txqueuelen_before)
        self.txqueuelen = self._txqueuelen_before
        self._txqueuelen_before = None

    @property
    def offload(self) -> Offload:
        """The offloads the kernel accepted (the same on every queue)."""
        return self.queues[0].offload

    @property
    def nqueues(self) -> int:
        return len(self.queues)

    @property
    def slot_size(self) -> int:
        """Ring slot size for what this port can receive: MTU-sized frames, or 64 KiB where
        superframes can arrive (TSO/USO negotiated); 64 KiB when the MTU was not looked at. A
        frame that outgrows it (the MTU raised later) is dropped and counted as ``truncated``."""
        if self.mtu is None:
            return MAX_SLOT_SIZE
        superframes = bool(self.offload & SUPERFRAME_OFFLOADS)
        return int(slot_size_for(self.mtu, superframes, self.mode))

    def close(self) -> None:
        for queue in self.queues:
            queue.close()
        self.watch.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        offload = "+".join(offload_names(self.offload)) or "none"
        return f"<Port {self.mode} {self.name!r} {self.nqueues} queue(s) offload={offload}>"


def _get_mtu(name: str) -> int:
    with rtnl() as ipr:
        return int(find_link(ipr, name, None).get_attr("IFLA_MTU"))


def _get_txqueuelen(name: str) -> int:
    with rtnl() as ipr:
        return int(find_link(ipr, name, None).get_attr("IFLA_TXQLEN"))


def _set_txqueuelen(name: str, length: int) -> None:
    check_int(length, "txqueuelen", 0, MAX_TXQUEUELEN)
    with rtnl() as ipr, netlink_errors(f"cannot set the txqueuelen of {name!r} to {length}"):
        ipr.link("set", index=find_link(ipr, name, None)["index"], txqlen=length)


def raise_txqueuelen(name: str, length: int) -> int:
    """Make device ``name``'s txqueuelen at least ``length`` (never lower it); returns it then."""
    check_int(length, "txqueuelen", 0, MAX_TXQUEUELEN)
    current = _get_txqueuelen(name)
    if current < length:
        _set_txqueuelen(name, length)
        return length
    return current


SIOCGIFFLAGS = 0x8913
_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags


class LinkWatch:
    """Reads a link's flags with ``SIOCGIFFLAGS`` on one socket opened in the link's namespace
    (sockets stay bound to the namespace they were made in).

    The engine asks every half second for as long as it runs: one ioctl on a socket it keeps,
    where a netlink handle per question (pyroute2 makes a socket and an event loop each time) made
    the process's memory grow for minutes (bench/RESULTS.md, the soak).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._request = _IFREQ_FLAGS.pack(name.encode(), 0)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def is_up(self) -> bool | None:
        """Whether the link is administratively up; None once it is gone (or closed)."""
        if self._sock.fileno() < 0:
            return None
        try:
            answer = fcntl.ioctl(self._sock.fileno(), SIOCGIFFLAGS, self._request)
        except OSError:
            return None  # ENODEV: the link is gone, or moved to another namespace
        return bool(_IFREQ_FLAGS.unpack(answer)[1] & IFF_UP)

    def close(self) -> None:
        self._sock.close()


def check_openable(name: str, mode: Mode) -> None:
    """Refuse, before anything is opened, a device ``name`` that exists and is not a ``mode``
    tun/tap (a tun for a tap, a veth, the loopback); a missing one is fine (it is created).

    Opening a persistent device with a virtio-net header changes its flags, so a command that
    fails on its second device must find that out before it opens the first.
    """
    try:
        with rtnl() as ipr:
            msg = find_link(ipr, name, None)
    except DeviceNotFoundError:
        return
    kind = link_kind(msg)
    if kind == mode:
        return
    if kind in ("tap", "tun"):
        hint = "leave out --tun" if kind == "tap" else "add --tun"
        raise FlagMismatchError(
            errno.EINVAL, f"cannot open {name!r} as a {mode}: it is a {kind} ({hint}, or name "
            f"another device)",
        )  # fmt: skip
    raise FlagMismatchError(
        errno.EINVAL, f"cannot open {name!r} as a {mode}: it is a {kind} link, not a tun/tap "
        "device (name a tap or tun, or a new name to create one)",
    )  # fmt: skip


def _open_queues(name: str, mode: Mode, queues: int, vnet_hdr: bool,
                 share: bool) -> list[TunQueue]:  # fmt: skip
    if queues > 1:
        return open_queues(name, queues, mode, vnet_hdr=vnet_hdr, share=share)
    try:
        return [open_queue(name, mode, vnet_hdr=vnet_hdr)]
    except FlagMismatchError as first:
        # A single queue opens a device created multi-queue too; if that is not it either, the
        # first error is the one that answers what was asked (no "multi-queue" in it).
        try:
            return open_queues(name, 1, mode, vnet_hdr=vnet_hdr, share=share)
        except FlagMismatchError:
            raise first from None


def open_port(name: str, *, mode: Mode = "tap", queues: int = 1,
              offload: bool | Offload = True, txqueuelen: int = DEFAULT_TXQUEUELEN,
              share: bool = False) -> Port:
    """Open ``queues`` queues of tun/tap ``name``, creating a non-persistent device if missing.

    With ``offload`` (``True`` means ``DEFAULT_OFFLOAD``) every queue gets a virtio-net header
    and as many of the offloads as the kernel accepts; then the kernel hands over 64 KiB
    superframes and the engine passes them through. ``offload=False`` gives plain frames.
    A single queue opens a device created multi-queue, too. The device's txqueuelen is raised to
    ``txqueuelen`` if it is lower (0: left as it is); ``Port.restore_txqueuelen`` undoes that.
    A multi-queue device whose queues another process holds is refused (``DeviceBusyError``)
    unless ``share``: the kernel would spread the traffic over both users.
    """
    check_int(queues, "number of queues", 1, MAX_TAP_QUEUES)
    check_int(txqueuelen, "txqueuelen", 0, MAX_TXQUEUELEN)
    check_openable(name, mode)
    wanted = DEFAULT_OFFLOAD if offload is True else Offload(offload or 0)
    opened = _open_queues(name, mode, queues, bool(wanted), share)
    port = Port(name, opened)
    try:
        for queue in opened:
            if wanted:
                queue.negotiate_offload(wanted)
        port.mtu = _get_mtu(name)
        if txqueuelen:
            port.raise_txqueuelen(txqueuelen)
    except BaseException:
        port.restore_txqueuelen()
        port.close()
        raise
    return port


@dataclass(frozen=True)
class PortStats:
    """One port's counters, summed over the engine's workers."""

    name: str
    up: bool
    down_errno: int
    counters: dict[str, int]
    offload: list[str] = field(default_factory=list)
    queues: list[dict[str, int]] = field(default_factory=list)   # QUEUE_COUNTERS per worker
    ring: dict[str, int] = field(default_factory=dict)  # slots, slot_size, bytes (per worker)
    link_up: bool = True        # False once Engine.link_events saw the link set down
    udp: dict[str, str | None] | None = None    # a UDP port's local, remote address and netns
    vxlan: dict[str, Any] | None = None     # a VXLAN port's configuration, counters, VTEP table

    def __getattr__(self, name: str) -> int:
        try:
            return self.counters[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def drops(self) -> dict[str, int]:
        """Drops by reason, only the reasons that happened."""
        return {reason: self.counters["drop_" + reason] for reason in DROP_REASONS
                if self.counters["drop_" + reason]}

    @property
    def rx_dropped(self) -> int:
        return sum(self.counters["drop_" + reason] for reason in INGRESS_DROPS)

    @property
    def tx_dropped(self) -> int:
        return sum(self.counters["drop_" + reason] for reason in EGRESS_DROPS)

    @property
    def state(self) -> str:
        """``UP``, ``DOWN (reason)`` for a port that failed, ``DOWN (link down)``."""
        if not self.up:
            return f"DOWN ({os.strerror(self.down_errno)})" if self.down_errno else "DOWN"
        return "UP" if self.link_up else "DOWN (link down)"

    @property
    def operstate(self) -> str:
        return "UP" if self.up and self.link_up else "DOWN"


@dataclass(frozen=True)
class StageStats:
    """One stage's counters, summed over the engine's workers: batches and packets it saw,
    verdicts it set (dropped, redirected), ones naming no port (misdirected) and lengths it
    left outside the slot (invalid), both dropped; ``ns`` is the time spent in it."""

    name: str
    counters: dict[str, int]

    def __getattr__(self, name: str) -> int:
        try:
            return self.counters[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.counters}


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's counters; ``rates(earlier)`` compares two snapshots."""

    timestamp: float                    # time.monotonic() when taken
    elapsed: float                      # seconds since the engine started
    mode: str
    workers: int
    ports: tuple[PortStats, ...]
    batch_sizes: dict[str, int]         # batches read, by size bucket, all ports and workers
    header_drops: dict[str, int]        # virtio-net header / segmentation refusals by reason
    mac_table: list[tuple[str, str, float]] | None = None   # (mac, port name, age s)
    stages: tuple[StageStats, ...] = ()     # the user's stages, in the order they run

    def port(self, name: str) -> PortStats:
        for port in self.ports:
            if port.name == name:
                return port
        raise KeyError(name)

    def rates(self, earlier: EngineStats) -> dict[str, dict[str, float]]:
        """Per port ``rx_pps``, ``rx_bps``, ``tx_pps``, ``tx_bps`` (bits) and ``dropped_pps``
        (drops of every reason, both directions) since ``earlier``."""
        span = self.timestamp - earlier.timestamp
        result: dict[str, dict[str, float]] = {}
        for now, then in zip(self.ports, earlier.ports, strict=True):
            def per_second(name: str, now: PortStats = now, then: PortStats = then) -> float:
                return (now.counters[name] - then.counters[name]) / span if span > 0 else 0.0
            dropped = (now.rx_dropped + now.tx_dropped) - (then.rx_dropped + then.tx_dropped)
            result[now.name] = {
                "rx_pps": per_second("rx_packets"), "rx_bps": 8 * per_second("rx_bytes"),
                "tx_pps": per_second("tx_packets"), "tx_bps": 8 * per_second("tx_bytes"),
                "dropped_pps": dropped / span if span > 0 else 0.0,
            }
        return result

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, each port shaped like ``ip -j -s link`` (``stats64.rx.packets`` ...)."""
        return {
            "mode": self.mode,
            "workers": self.workers,
            "elapsed": round(self.elapsed, 3),
            "ports": [
                {
                    "ifname": port.name,
                    "operstate": port.operstate,
                    "down_reason": os.strerror(port.down_errno) if port.down_errno else None,
                    "offload": port.offload,
                    "queues": port.queues,
                    "stats64": {
                        "rx": {"bytes": port.rx_bytes, "packets": port.rx_packets,
                               "errors": port.rx_errors, "dropped": port.rx_dropped},
                        "tx": {"bytes": port.tx_bytes, "packets": port.tx_packets,
                               "errors": port.drop_tx_error, "dropped": port.tx_dropped},
                    },
                    "drops": port.drops,
                    "flooded": port.flooded,
                    "segmented": port.segmented,
                    "batches": port.rx_batches,
                    "ring": port.ring,
                    **({"udp": port.udp} if port.udp is not None else {}),
                    **({"vxlan": port.vxlan} if port.vxlan is not None else {}),
                }
                for port in self.ports
            ],
            "batch_sizes": self.batch_sizes,
            "header_drops": self.header_drops,
            **({"mac_table": [{"mac": mac, "port": name, "age": round(age, 1)}
                              for mac, name, age in self.mac_table]}
               if self.mac_table is not None else {}),
            **({"stages": [stage.as_json() for stage in self.stages]} if self.stages else {}),
        }

    def format(self) -> str:
        """A human table: one line per port, then drops, batch sizes and the MAC table."""
        width = max([16, *(len(port.name) for port in self.ports)])   # udp:[fd77::1]:4789
        lines = [f"{'port':<{width}} {'state':<6} {'rx packets':>12} {'rx bytes':>15} "
                 f"{'tx packets':>12} {'tx bytes':>15} {'dropped':>9}"]
        for port in self.ports:
            lines.append(
                f"{port.name:<{width}} {port.operstate:<6} {port.rx_packets:>12} "
                f"{port.rx_bytes:>15} {port.tx_packets:>12} {port.tx_bytes:>15} "
                f"{port.rx_dropped + port.tx_dropped:>9}"
            )
        if self.workers > 1:
            for port in self.ports:
                lines.append(f"{port.name} per queue: " + ", ".join(
                    f"{k}: rx {q['rx_packets']} tx {q['tx_packets']}"
                    for k, q in enumerate(port.queues)))
        for port in self.ports:
            if port.drops:
                reasons = ", ".join(f"{reason} {n}" for reason, n in port.drops.items())
                lines.append(f"drops on {port.name}: {reasons}")
            if port.udp is not None:
                lines.append(f"{port.name}: UDP, local {port.udp['local']}, remote "
                             f"{port.udp['remote'] or 'any'}")
            if port.vxlan is not None:
                lines.append(format_vxlan(port.name, port.vxlan))
            if not port.up:
                lines.append(f"{port.name} went down: {port.state[6:-1] or 'hung up'}")
            elif not port.link_up:
                lines.append(f"{port.name}: link is down")
        if self.header_drops:
            lines.append("refused virtio-net headers: " + ", ".join(
                f"{reason} {n}" for reason, n in self.header_drops.items()))
        batches = {size: n for size, n in self.batch_sizes.items() if n}
        if batches:
            lines.append("batch sizes: " + ", ".join(f"{size}: {n}" for size, n in batches.items()))
        for stage in self.stages:
            lines.append(f"stage {stage.name}: " + ", ".join(
                f"{name} {n}" for name, n in stage.counters.items() if name != "ns")
                + f", {stage.ns / max(stage.batches, 1):,.0f} ns/batch")
        if self.mac_table is not None:
            lines.append(f"MAC table: {len(self.mac_table)} entries")
            lines += [f"  {mac}  {name}" for mac, name, _ in self.mac_table]
        return "\n".join(lines)


@dataclass(frozen=True)
class PortEvent:
    """A port that went down while the engine ran."""

    port: str
    errno: int

    def __str__(self) -> str:
        reason = os.strerror(self.errno) if self.errno else "hung up"
        if self.errno in (errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EIO):
            why = "the device was deleted"
        elif self.errno in (0, errno.EPIPE):
            why = "it hung up"
        else:
            why = "its reads kept failing for a second"
        return f"port {self.port} is down ({reason}: {why}); forwarding goes on between the others"


@dataclass(frozen=True)
class LinkEvent:
    """A port's link that was set down (or up again) while the engine ran."""

    port: str
    up: bool

    def __str__(self) -> str:
        if self.up:
            return f"port {self.port}: link is up again; forwarding to it resumes"
        return (f"port {self.port}: link is down; frames toward it are dropped (counted as "
                f"link_down) until 'ip link set {self.port} up'")


class Engine:
    """Forward between ``ports`` in ``mode`` (``"wire"``: exactly two; ``"switch"``: two or more).

    A wire may join a tun or tap with a UDP port (``tapengine.udpport``): each packet of the one
    is a datagram of the other. An engine with a UDP port runs one worker.

    Every port must have the same number of queues; one worker thread serves queue *k* of every
    port. ``budget`` is the most packets read from a port per pass of a worker's loop. A context
    manager: ``with Engine(...) as engine:`` starts it and stops it on the way out.

    ``stages`` run on every batch before the built-in wire or switch, in order: ``Stage``
    objects (Python or C) or any callable taking a ``Batch``; each worker calls the same
    objects. ``attach(port_names)`` of each is called once by ``start()``, ``detach()`` once by
    ``close()`` when every worker has stopped (a stage closes what it opened). A stage that raises
    stops the engine: ``failure`` is then a ``StageError`` whose cause is the stage's exception.
    """

    def __init__(self, ports: Sequence[Port | UdpPort | VxlanPort], mode: EngineMode = "wire", *,
                 budget: int = 64,
                 table_size: int = 4096, ageing: float = 300.0, spin: int = 0,
                 io: IoChoice = "auto",
                 coalesce_usecs: int = DEFAULT_COALESCE_USECS,
                 stages: Sequence[Any] = ()) -> None:  # fmt: skip
        if mode not in ("wire", "switch"):
            raise ValueError(f"mode must be 'wire' or 'switch', not {mode!r}")
        names = [port.name for port in ports]
        if len(set(names)) != len(names):
            raise ValueError(f"a port is listed twice: {', '.join(names)}")
        if mode == "wire" and len(ports) != 2:
            raise ValueError(f"a wire joins exactly two ports, not {len(ports)}")
        if mode == "switch" and len(ports) < 2:
            raise ValueError("a switch needs at least two ports")
        if mode == "switch" and len(ports) > MAX_SWITCH_PORTS:
            raise ValueError(f"a switch takes at most {MAX_SWITCH_PORTS} ports, not {len(ports)}")
        check_int(budget, "budget", 1, MAX_BUDGET)
        if mode == "switch":
            check_int(table_size, "MAC table size", MIN_TABLE_SIZE, MAX_TABLE_SIZE)
            check_float(ageing, "ageing time", high=MAX_AGEING)
        udp = [port.name for port in ports if isinstance(port, UdpPort)]
        if mode == "switch" and udp:
            raise ValueError(f"a UDP port joins a wire, not a switch: {', '.join(udp)}")
        if len(udp) > 1:    # a received datagram's slot names its sender: it would go back there
            raise ValueError(f"a wire joins a UDP port with a tun or tap, not two UDP ports: "
                             f"{', '.join(udp)}")
        if mode == "switch" and any(port.mode != "tap" for port in ports):
            raise ValueError("a switch forwards Ethernet frames: every port must be a tap")
        if len({port.mode for port in ports} - {"udp"}) > 1:
            raise ValueError("cannot forward between a tun and a tap")
        if udp and any(port.nqueues > 1 for port in ports):
            raise ValueError("a UDP port serves one worker: open the other port with one queue")
        if len({port.nqueues for port in ports}) > 1:
            raise ValueError("every port needs the same number of queues: "
                             + ", ".join(f"{port.name} {port.nqueues}" for port in ports))
        self.ports = list(ports)
        self.mode: EngineMode = mode
        self._l2 = any(port.mode == "tap" for port in ports)   # what a UDP port carries too
        self.budget = budget
        self.spin = spin
        if io not in ("auto", "readv", "uring"):
            raise ValueError(f"io must be 'auto', 'readv' or 'uring', not {io!r}")
        self.io: IoBackend = ("uring" if uring_available() else "readv") if io == "auto" else io
        check_int(coalesce_usecs, "coalesce time (microseconds)", 0, MAX_COALESCE_USECS)
        self.coalesce_usecs = coalesce_usecs
        self.table = MacTable(table_size, ageing) if mode == "switch" else None
        self.stages: list[Stage] = [as_stage(stage) for stage in stages]
        self._attached = False      # attach() called, detach() not yet
        stage_names = [stage.name for stage in self.stages]
        if len(set(stage_names)) != len(stage_names):
            raise ValueError(f"two stages have the same name: {', '.join(stage_names)}; "
                             "give each its own (Stage(name=...))")
        self._forwarders: list[Forwarder] = []
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._reported: set[str] = set()
        self._link_down: set[str] = set()     # ports whose link was seen down (link_events)
        self._link_seen_up: set[str] = set()
        self._started = 0.0
        self._stopped: float | None = None
        self._rings: dict[int, dict[str, int]] = {}   # port index -> its ring, per worker
        self._ring_objects: list[tuple[int, PacketRing]] = []   # (port index, ring), all workers

    @property
    def workers(self) -> int:
        return self.ports[0].nqueues

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    @property
    def failure(self) -> BaseException | None:
        """The error of the first worker that failed (and stopped the engine), or None."""
        return self._errors[0] if self._errors else None

    def start(self) -> None:
        """Start one worker per queue; returns at once. Raises if already started."""
        if self._forwarders:
            raise RuntimeError("the engine was already started")
        nslots = 1 << (self.budget - 1).bit_length()
        names = [port.name for port in self.ports]
        for stage in self.stages:
            stage.attach(names)
        self._attached = True
        try:
            for k in range(self.workers):
                uring = UringIO(uring_entries(self.budget), linked_writes=False,
                                direct_small=True) if self.io == "uring" else None
                forwarder = Forwarder(self.mode, self.budget, self.table, self.spin, uring,
                                      self.coalesce_usecs)
                for index, port in enumerate(self.ports):
                    ring = PacketRing(nslots, port.slot_size)
                    self._rings[index] = ring_memory(ring)
                    self._ring_objects.append((index, ring))
                    io = {"port_io": port.port_io(k)} if hasattr(port, "port_io") else {}
                    forwarder.add_port(None if io else port.queues[k].fileno(), ring,
                                       vnet_hdr=port.vnet_hdr, l2=self._l2, **io)
                for stage in self.stages:
                    forwarder.add_stage(stage, names)
                self._forwarders.append(forwarder)
        except BaseException:
            for forwarder in self._forwarders:
                forwarder.close()
            self._forwarders.clear()
            self._ring_objects.clear()
            raise
        self._started = time.monotonic()
        for k, forwarder in enumerate(self._forwarders):
            thread = threading.Thread(target=self._work, args=(forwarder,),
                                      name=f"tapengine-worker-{k}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self, forwarder: Forwarder) -> None:
        try:
            forwarder.run()
        except BaseException as exc:  # reported by failure and stop()
            self._errors.append(exc)
            for other in self._forwarders:  # one worker down takes the engine down
                other.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every worker and wait for it; re-raises the first error a worker hit, or
        ``StuckWorkerError`` when one does not stop within ``timeout`` seconds."""
        for forwarder in self._forwarders:
            forwarder.stop()
        for thread in self._threads:
            thread.join(timeout)
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            raise StuckWorkerError(f"forwarding worker {', '.join(stuck)} did not stop within "
                                   f"{timeout:g} s")
        if self._stopped is None and self._forwarders:
            self._stopped = time.monotonic()
        if self._errors:
            raise self._errors[0]

    def close(self) -> None:
        """Stop, then free the workers' descriptors (their epoll, eventfd, io_uring and dup()ed
        port fds; the ports themselves stay open). A worker that did not stop keeps its own."""
        try:
            self.stop()
        finally:
            for forwarder, thread in zip(self._forwarders, self._threads, strict=False):
                if not thread.is_alive():
                    forwarder.close()
            for forwarder in self._forwarders[len(self._threads):]:   # never started
                forwarder.close()
            if self._attached and not self.running:     # a stuck worker may still call them
                self._attached = False
                for stage in self.stages:
                    stage.detach()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- observing ---------------------------------------------------------------------------

    def _port_state(self, index: int) -> tuple[bool, int]:
        for forwarder in self._forwarders:
            if not forwarder.port_up(index):
                return False, forwarder.down_errno(index)
        return True, 0

    def stats(self) -> EngineStats:
        """A snapshot of every counter, summed over workers, taken without stopping them."""
        now = time.monotonic()
        nports = len(self.ports)
        counters = np.zeros((nports, len(COUNTER_NAMES)), dtype=np.uint64)
        last_errno = np.zeros(nports, dtype=np.uint64)
        hist = np.zeros(len(HISTOGRAM_BUCKETS), dtype=np.uint64)
        header = np.zeros(len(GSO_REASONS), dtype=np.uint64)
        per_queue: list[np.ndarray] = []
        staged = np.zeros((len(self.stages), len(STAGE_COUNTER_NAMES)), dtype=np.uint64)
        for forwarder in self._forwarders:
            staged += forwarder.stage_counters
            live = np.array(forwarder.counters)      # one copy, then consistent sums
            per_queue.append(live)
            counters += live
            last_errno = np.maximum(last_errno, live[:, _COL["last_errno"]])
            hist += forwarder.histogram.sum(axis=0, dtype=np.uint64)
            header += forwarder.gso_drops
        counters[:, _COL["last_errno"]] = last_errno
        ports = []
        for index, port in enumerate(self.ports):
            up, down_errno = self._port_state(index) if self._forwarders else (True, 0)
            ports.append(PortStats(
                name=port.name, up=up, down_errno=down_errno,
                link_up=port.name not in self._link_down,
                counters={name: int(counters[index, k]) for k, name in enumerate(COUNTER_NAMES)},
                offload=offload_names(port.offload),
                queues=[{name: int(live[index, _COL[name]]) for name in QUEUE_COUNTERS}
                        for live in per_queue],
                ring=dict(self._rings.get(index, {})),
                udp=port.addresses() if isinstance(port, UdpPort) else None,
                vxlan=port.info() if isinstance(port, VxlanPort) else None,
            ))
        table = None
        if self.table is not None:
            table = [(mac, self.ports[index].name, age)
                     for mac, index, age in self.table.entries()]
        end = self._stopped if self._stopped is not None else now
        return EngineStats(
            timestamp=now,
            elapsed=end - self._started if self._forwarders else 0.0,
            mode=self.mode,
            workers=self.workers,
            ports=tuple(ports),
            batch_sizes={label: int(n) for label, n in zip(HISTOGRAM_BUCKETS, hist, strict=True)},
            header_drops={GSO_REASONS[k]: int(n) for k, n in enumerate(header) if n},
            mac_table=table,
            stages=tuple(StageStats(stage.name, {name: int(n) for name, n in
                                                 zip(STAGE_COUNTER_NAMES, row, strict=True)})
                         for stage, row in zip(self.stages, staged, strict=True)),
        )

    def worker_states(self) -> list[dict[str, Any]]:
        """Per worker: ``running`` (its thread is alive), ``passes`` of its loop and ``sleeps``
        in epoll_wait (for the metrics)."""
        return [{"running": k < len(self._threads) and self._threads[k].is_alive(),
                 "passes": forwarder.passes, "sleeps": forwarder.sleeps}
                for k, forwarder in enumerate(self._forwarders)]  # fmt: skip

    def ring_occupancy(self) -> dict[str, int]:
        """Per port: slots of its rings (all workers) holding a batch in flight right now, read
        without stopping the workers (for the metrics)."""
        used = dict.fromkeys((port.name for port in self.ports), 0)
        for index, ring in self._ring_objects:
            if not ring.closed:
                used[self.ports[index].name] += ring.pending
        return used

    def events(self) -> list[PortEvent]:
        """Ports that went down since the last call (each reported once)."""
        found = []
        for index, port in enumerate(self.ports):
            if port.name in self._reported or not self._forwarders:
                continue
            up, down_errno = self._port_state(index)
            if not up:
                self._reported.add(port.name)
                found.append(PortEvent(port.name, down_errno))
        return found

    def link_events(self) -> list[LinkEvent]:
        """Ports whose link went down, or up again, since the last call (``SIOCGIFFLAGS``).

        A link that was down from the start (a tap the engine created is down until someone
        brings it up) is not reported until it has been up once; a port whose link is in
        another namespace is not watched.
        """
        found = []
        for port in self.ports:
            up = port.watch.is_up()
            if up is None:
                continue
            if up:
                self._link_seen_up.add(port.name)
                if port.name in self._link_down:
                    self._link_down.discard(port.name)
                    found.append(LinkEvent(port.name, True))
            elif port.name in self._link_seen_up and port.name not in self._link_down:
                self._link_down.add(port.name)
                found.append(LinkEvent(port.name, False))
        return found

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"<Engine {self.mode} {', '.join(port.name for port in self.ports)}: "
                f"{self.workers} worker(s), {state}>")


def open_ports(names: Iterable[str], *, txqueuelen: int = DEFAULT_TXQUEUELEN,
               **kwargs: Any) -> list[Port]:  # fmt: skip
    """``open_port`` for each name; all or none. Every device is opened before any txqueuelen
    is raised, and on an error the raised ones get their old txqueuelen back and every queue is
    closed: a failure leaves the devices as they were."""
    check_int(txqueuelen, "txqueuelen", 0, MAX_TXQUEUELEN)
    names = list(names)
    for name in names:
        check_openable(name, kwargs.get("mode", "tap"))
    ports: list[Port] = []
    try:
        for name in names:
            ports.append(open_port(name, txqueuelen=0, **kwargs))
        if txqueuelen:
            for port in ports:
                port.raise_txqueuelen(txqueuelen)
    except BaseException:
        close_ports(ports, restore=True)
        raise
    return ports


def close_ports(ports: Iterable[Port], *, restore: bool = False) -> None:
    """Close every port; with ``restore``, first give back the txqueuelen each one raised."""
    for port in ports:
        if restore:
            port.restore_txqueuelen()
        port.close()
