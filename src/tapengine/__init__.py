"""tapengine: a Linux packet engine for tun/tap devices.

The data plane is compiled Cython (``tapengine._ring``, ``tapengine._batchio``); importing the
package without it fails loudly rather than falling back to a slow path.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    from tapengine._batchio import recv_batch, send_batch
    from tapengine._forward import Forwarder, MacTable
    from tapengine._gso import GsoReason, complete_checksum, segment, segment_batch
    from tapengine._gso import validate as validate_vnet_header
    from tapengine._pktgen import Generator, Sink
    from tapengine._ring import VNET_HDR_DTYPE, PacketRing
    from tapengine._uring import ReadvIO, UringIO, open_batch_io
except ImportError as _err:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "tapengine's compiled extensions are missing or broken "
        f"({_err}); build them with 'make build' (or 'pip install -e .' in a checkout)"
    ) from _err

from tapengine.devices import Bridge, Link, create_bridge, create_tap, create_veth, get_link
from tapengine.engine import Engine, EngineStats, Port, PortStats, open_port, open_ports
from tapengine.errors import TapengineError
from tapengine.kstats import LinkStats, rates, read_stats
from tapengine.netns import Namespace, create_netns, inside_netns, run_in_netns
from tapengine.topology import Topology
from tapengine.traffic import GenConfig, GenResult, SinkResult, parse_rate, parse_size
from tapengine.tun import IfFlag, Offload, TunQueue, features, open_queue, open_queues

try:
    __version__ = version("tapengine")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "VNET_HDR_DTYPE",
    "Bridge",
    "Engine",
    "EngineStats",
    "Forwarder",
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
    "PortStats",
    "ReadvIO",
    "Sink",
    "SinkResult",
    "TapengineError",
    "Topology",
    "TunQueue",
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
    "parse_rate",
    "parse_size",
    "rates",
    "read_stats",
    "recv_batch",
    "run_in_netns",
    "segment",
    "segment_batch",
    "send_batch",
    "validate_vnet_header",
]
