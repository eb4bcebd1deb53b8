"""A stage that mirrors a port's traffic to a third device, as a switch's SPAN port does.

    tapengine forward tap0 tap1 --stage examples/stages/mirror.py:stage

writes a copy of every frame received on ``tap0`` to the tap ``mirror0`` (created while the
engine runs; watch it with ``tcpdump -i mirror0``), straight from the ring with one batched
write; the frames themselves go on as usual. Copies the mirror device cannot take (its queue is
full, its link is down) are counted in ``lost``, never waited for.
"""

from __future__ import annotations

import tapengine
from tapengine import Batch, Stage, TunQueue


class Mirror(Stage):
    """Copies every frame received on ``port_name`` to the tap ``device``."""

    def __init__(self, port_name: str, device: str, name: str = "mirror") -> None:
        super().__init__(name)
        self.port_name, self.device = port_name, device
        self.queue: TunQueue | None = None
        self.copied = self.lost = 0

    def attach(self, port_names: list[str]) -> None:
        if self.port_name not in port_names:
            raise ValueError(f"no port {self.port_name!r} here: {', '.join(port_names)}")

    def detach(self) -> None:
        if self.queue is not None:      # the engine closed: the mirror tap goes with its fd
            self.queue.close()
            self.queue = None

    def __call__(self, batch: Batch) -> None:
        if batch.port_name != self.port_name:
            return
        if self.queue is None:      # the ports' header format is known from the first batch on
            self.queue = tapengine.open_queue(self.device, "tap", vnet_hdr=batch.vnet_hdr)
        try:
            sent = self.queue.send_batch(batch.ring, batch.first, batch.n)
        except OSError as err:      # e.g. EIO: the mirror's link is down
            sent = getattr(err, "completed", 0) or 0
        self.copied += sent
        self.lost += batch.n - sent


stage = Mirror("tap0", "mirror0")
