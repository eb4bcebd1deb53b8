"""A stage that drops a UDP or TCP destination port, vectorised over the batch.

    tapengine forward tap0 tap1 --stage examples/stages/drop_port.py:stage

drops every UDP datagram to port 9 (discard) in both directions; everything else passes. The
drops are counted under the stage's name: ``--json`` shows ``"stages": [{"name": "drop_port",
"dropped": ...}]``. For other ports, make your own: ``DropPort(udp=[53], tcp=[23])``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tapengine import DROP, Batch, Stage
from tapengine.stages import TCP, UDP, l4_ports


class DropPort(Stage):
    """Drops packets to the UDP ports ``udp`` and the TCP ports ``tcp``."""

    def __init__(self, udp: Iterable[int] = (), tcp: Iterable[int] = (),
                 name: str = "drop_port") -> None:  # fmt: skip
        super().__init__(name)
        self.udp = sorted(set(udp))
        self.tcp = sorted(set(tcp))

    def __call__(self, batch: Batch) -> None:
        proto, _, dport = l4_ports(batch)
        for protocol, ports in ((UDP, self.udp), (TCP, self.tcp)):
            for port in ports:
                # a few numpy calls per port and batch, none per packet
                hit = dport == port
                hit &= proto == protocol
                batch.verdict[hit] = DROP


stage = DropPort(udp=[9])
