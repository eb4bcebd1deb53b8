"""tapengine: a Linux packet engine for tun/tap devices.

The data plane is compiled Cython (``tapengine._ring``, ``tapengine._batchio``, ...); importing
the package without it fails loudly rather than falling back to a slow path. ``import tapengine``
loads only the data plane: the control plane (devices, namespaces, topologies, the engine, which
pull in pyroute2) loads on first use of one of its names (PEP 562), so a program that only wants
rings and batches does not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

try:
    from tapengine._batchio import PortIO, ReadvIO, UdpPortIO, recv_batch, send_batch
    from tapengine._forward import Forwarder, MacTable
    from tapengine._gso import GsoReason, complete_checksum, segment, segment_batch
    from tapengine._gso import validate as validate_vnet_header
    from tapengine._pktgen import Generator, Sink
    from tapengine._ring import (
        FRAME_OFFSET,
        HEADROOM,
        PEER_DTYPE,
        VNET_HDR_DTYPE,
        PacketRing,
        slot_size_for,
    )
    from tapengine._stage import DEFAULT, DROP, FLOOD, Batch, FunctionStage, Stage
    from tapengine._uring import UringIO, open_batch_io
except ImportError as _err:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "tapengine's compiled extensions are missing or broken "
        f"({_err}); build them with 'make build' (or 'pip install -e .' in a checkout)"
    ) from _err

from tapengine.errors import StageError, TapengineError

#: Control-plane names and the module each comes from, imported on first access.
_LAZY = {
    **dict.fromkeys(
        ("Bridge", "Link", "create_bridge", "create_tap", "create_veth", "get_link"),
        "tapengine.devices",
    ),
    **dict.fromkeys(
        ("Engine", "EngineStats", "Port", "PortStats", "open_port", "open_ports"),
        "tapengine.engine",
    ),
    **dict.fromkeys(("LinkStats", "rates", "read_stats"), "tapengine.kstats"),
    **dict.fromkeys(
        ("Namespace", "create_netns", "inside_netns", "run_in_netns"), "tapengine.netns"
    ),
    "Topology": "tapengine.topology",
    **dict.fromkeys(
        ("GenConfig", "GenResult", "SinkResult", "parse_rate", "parse_size"), "tapengine.traffic"
    ),
    **dict.fromkeys(
        ("IfFlag", "Offload", "TunQueue", "features", "open_queue", "open_queues"),
        "tapengine.tun",
    ),
    **dict.fromkeys(("UdpPort", "open_udp_port"), "tapengine.udpport"),
}

if TYPE_CHECKING:  # what a type checker sees is what __getattr__ provides
    from tapengine.devices import Bridge, Link, create_bridge, create_tap, create_veth, get_link
    from tapengine.engine import Engine, EngineStats, Port, PortStats, open_port, open_ports
    from tapengine.kstats import LinkStats, rates, read_stats
    from tapengine.netns import Namespace, create_netns, inside_netns, run_in_netns
    from tapengine.topology import Topology
    from tapengine.traffic import GenConfig, GenResult, SinkResult, parse_rate, parse_size
    from tapengine.tun import IfFlag, Offload, TunQueue, features, open_queue, open_queues
    from tapengine.udpport import UdpPort, open_udp_port


def _version() -> str:
    # importlib.metadata costs about a third of the import (it pulls in email.*): read on demand
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tapengine")
    except PackageNotFoundError:  # pragma: no cover - running from a tree never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tapengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


__all__ = [
    "DEFAULT",
    "DROP",
    "FLOOD",
    "FRAME_OFFSET",
    "HEADROOM",
    "PEER_DTYPE",
    "VNET_HDR_DTYPE",
    "Batch",
    "Bridge",
    "Engine",
    "EngineStats",
    "Forwarder",
    "FunctionStage",
    "GenConfig",
    "GenResult",
    "Generator",
    "GsoReason",
    "IfFlag",
    "Link",
    "LinkStats",
    "MacTable",
    "Namespace",
    "Offload",
    "PacketRing",
    "Port",
    "PortIO",
    "PortStats",
    "ReadvIO",
    "Sink",
    "SinkResult",
    "Stage",
    "StageError",
    "TapengineError",
    "Topology",
    "TunQueue",
    "UdpPort",
    "UdpPortIO",
    "UringIO",
    "__version__",
    "complete_checksum",
    "create_bridge",
    "create_netns",
    "create_tap",
    "create_veth",
    "features",
    "get_link",
    "inside_netns",
    "open_batch_io",
    "open_port",
    "open_ports",
    "open_queue",
    "open_queues",
    "open_udp_port",
    "parse_rate",
    "parse_size",
    "rates",
    "read_stats",
    "recv_batch",
    "run_in_netns",
    "segment",
    "segment_batch",
    "send_batch",
    "slot_size_for",
    "validate_vnet_header",
]
