"""A stage that rate-limits one flow with a token bucket, vectorised over the batch.

    tapengine forward tap0 tap1 --stage examples/stages/rate_limit.py:stage

lets at most 1000 packets per second (bursts of 100) of UDP to port 5201 through; the rest of
that flow is dropped and counted under ``rate_limit``. Everything else passes untouched.
"""

from __future__ import annotations

import time

import numpy as np

from tapengine import DROP, Batch, Stage
from tapengine.stages import UDP, l4_ports


class RateLimit(Stage):
    """At most ``rate`` packets per second (``burst`` at once) to ``proto``/``dport``."""

    def __init__(self, dport: int, rate: float, burst: int, proto: int = UDP,
                 name: str = "rate_limit") -> None:  # fmt: skip
        super().__init__(name)
        self.proto, self.dport, self.rate, self.burst = proto, dport, rate, burst
        self.tokens = float(burst)
        self.last = time.monotonic()

    def __call__(self, batch: Batch) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        proto, _, dport = l4_ports(batch)
        flow = np.flatnonzero((proto == self.proto) & (dport == self.dport))
        allowed = min(len(flow), int(self.tokens))
        self.tokens -= allowed
        batch.verdict[flow[allowed:]] = DROP


stage = RateLimit(dport=5201, rate=1000, burst=100)
