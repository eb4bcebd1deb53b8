"""A stage for a UDP port without ``--peer``: packets go back to whoever sent the last datagram.

    tapengine forward tun0 --tun --udp 10.77.0.1:4789 --stage examples/stages/learn_peer.py:stage

The tunnel end that waits: the socket takes datagrams from anyone, and this stage gives every
packet of the tun the address of the last datagram received, so the other end may change its
address (a laptop moving to another network) without this one being told. Until a datagram has
arrived the tun's packets have nowhere to go: they are dropped, counted under ``learn_peer``.
The datagrams' addresses are in ``batch.peers`` (family 0 means none: a packet of the tun).

There is no authentication here: anyone who can send this socket a datagram becomes the peer
and receives what the tun sends from then on. Use it on an underlay you trust, or behind a stage
that checks the datagrams first.
"""

from __future__ import annotations

import numpy as np

from tapengine import DROP, Batch, Stage


class LearnPeer(Stage):
    """Remembers the source of the last datagram; sends the tun's packets there."""

    def __init__(self, name: str = "learn_peer") -> None:
        super().__init__(name)
        self.peer: np.void | None = None        # one PEER_DTYPE record, once learned

    def __call__(self, batch: Batch) -> None:
        peers = batch.peers
        if batch.n and peers["family"][-1]:     # datagrams: their senders' addresses
            self.peer = peers[-1].copy()
        elif self.peer is not None:             # the tun's packets: to the last sender
            peers[:] = self.peer
        else:
            batch.verdict[:] = DROP             # nobody has spoken yet


stage = LearnPeer()
