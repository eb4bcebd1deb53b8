"""``--metrics [ADDR:]PORT`` and ``--metrics-public``, shared by ``forward``, ``switch`` and
``sink``: Prometheus metrics over HTTP while the command runs (``tapengine.metrics``)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from tapengine.cli.common import ParsedArg


def _parse_listen(text: str) -> tuple[str, int]:
    from tapengine.metrics import parse_listen

    return parse_listen(text)


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    """``--metrics [ADDR:]PORT`` and ``--metrics-public``."""
    parser.add_argument(
        "--metrics", type=ParsedArg("address", _parse_listen), metavar="[ADDR:]PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics while running (ADDR "
             "defaults to 127.0.0.1; PORT 0 picks a free port, printed when ready)",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-public", action="store_true",
        help="allow --metrics on an address other machines can reach (refused without it: the "
             "counters name your devices and traffic)",
    )  # fmt: skip


def check_metrics(args: argparse.Namespace) -> None:
    """Refuse a non-loopback ``--metrics`` address without ``--metrics-public``; call before
    anything is opened or bound."""
    if args.metrics is not None:
        from tapengine.metrics import check_bind

        host, port = args.metrics
        check_bind(host, port, public=args.metrics_public)


@contextlib.contextmanager
def serving_metrics(args: argparse.Namespace, collector: Any) -> Iterator[Any]:
    """The ``MetricsServer`` of ``--metrics`` serving ``collector`` for the body (None without
    ``--metrics``); the port is bound on entry and freed on exit."""
    if args.metrics is None:
        yield None
        return
    from tapengine.metrics import MetricsServer

    check_metrics(args)
    host, port = args.metrics
    with MetricsServer(collector, host, port) as server:
        yield server
