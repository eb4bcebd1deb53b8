"""A stage that rewrites the destination MAC of the frames coming in on one port.

    tapengine switch tap0 tap1 tap2 --stage examples/stages/rewrite_mac.py:stage

gives every frame that arrives on ``tap0`` the destination 02:00:00:00:00:01 (a gateway, say)
before the switch looks it up, so that all of tap0's traffic goes to that station. The frames are
rewritten in place, in the ring: nothing is copied.
"""

from __future__ import annotations

import numpy as np

from tapengine import Batch, Stage


class RewriteMac(Stage):
    """Sets the destination MAC of every frame received on port ``port_name`` to ``mac``."""

    def __init__(self, port_name: str, mac: str, name: str = "rewrite_mac") -> None:
        super().__init__(name)
        self.port_name = port_name
        self.mac = np.frombuffer(bytes.fromhex(mac.replace(":", "")), dtype=np.uint8)
        if len(self.mac) != 6:
            raise ValueError(f"not a MAC address: {mac!r}")

    def attach(self, port_names: list[str]) -> None:
        if self.port_name not in port_names:
            raise ValueError(f"no port {self.port_name!r} here: {', '.join(port_names)}")

    def __call__(self, batch: Batch) -> None:
        if batch.port_name == self.port_name and batch.l2:
            batch.frames[:, 0:6] = self.mac


stage = RewriteMac("tap0", "02:00:00:00:00:01")
