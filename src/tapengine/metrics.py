"""Prometheus metrics: custom collectors over the live counters, served by prometheus_client.

``EngineCollector(engine)`` reads a running ``Engine`` at every scrape (``Engine.stats()``, the
workers' state, the rings' occupancy) and ``SinkCollector(sink, device)`` reads a ``Sink``'s
counters; neither keeps a copy, so a scrape is as fresh as ``forward --json`` at that moment.
``MetricsServer`` serves one collector with prometheus_client's own HTTP server (its exposition
format, its content negotiation); nothing here writes the text format by hand.

What is exported (every counter from the start, zeros included, so no series appears late):

- ``tapengine_port_packets_total{port,direction}``, ``..._bytes_total``, ``..._errors_total``:
  ``direction`` is ``rx`` (read from the port) or ``tx`` (written to it), as ``ip -s link``.
- ``tapengine_port_dropped_total{port,direction,reason}``: every drop reason of the forwarder;
  egress reasons (``full``, ``link_down``, ...) on ``tx``, the others on ``rx``.
- ``tapengine_port_batches_total``, ``..._flooded_total``, ``..._segmented_total{port}``;
  ``tapengine_port_up{port}`` (the engine serves it) and ``tapengine_port_link_up{port}``.
- ``tapengine_queue_packets_total{port,queue,direction}`` and ``..._bytes_total``: per worker.
- ``tapengine_ring_slots``, ``..._slot_size_bytes``, ``..._memory_bytes`` (all workers' rings)
  and ``..._occupied_slots{port}`` (slots holding a batch in flight right now).
- ``tapengine_batch_size_packets``: a histogram of the packets per batch read, ``le`` the upper
  end of each bucket of the forwarder (1, 3, 7, ..., 511); its sum is every packet read.
- ``tapengine_header_drops_total{reason}``: virtio-net headers refused, by reason.
- ``tapengine_worker_running{worker}``, ``tapengine_worker_passes_total{worker}``,
  ``tapengine_worker_sleeps_total{worker}``, ``tapengine_engine_failed``,
  ``tapengine_engine_elapsed_seconds``, ``tapengine_engine_info{mode}``,
  ``tapengine_mac_table_entries`` (switch).
- ``tapengine_stage_<counter>_total{stage}`` for each counter of each stage (``batches``,
  ``seen``, ``dropped``, ``redirected``, ...), and ``tapengine_stage_seconds_total{stage}``.

The listening address is parsed by ``parse_listen`` (``9464`` means ``127.0.0.1:9464``) and a
non-loopback address is refused by ``check_bind`` unless asked for with ``public=True``: the
counters name devices and traffic volumes, which is nobody else's business by default.

prometheus_client is imported only when a server starts or a collector runs: ``import tapengine``
and every command without ``--metrics`` never load it.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from tapengine.errors import AddressError, InvalidValueError
from tapengine.validate import MAX_PORT, check_endpoint, format_endpoint, parse_int

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from tapengine._pktgen import Sink
    from tapengine.engine import EngineStats

#: The address ``--metrics PORT`` binds: this machine only.
DEFAULT_HOST = "127.0.0.1"

#: ``direction`` label values: read from the port, written to it.
_DIRECTIONS = ("rx", "tx")

#: Upper bounds (seconds) of the sink's latency histogram as exported: decades in 1-2-5 steps.
LATENCY_BUCKETS_S = tuple(
    mantissa * 10.0 ** exponent for exponent in range(-6, 1) for mantissa in (1, 2, 5)
)  # fmt: skip


# -- where to listen ----------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[IPV6]:PORT`` -> ``(address, port)``; a bare port listens on
    ``DEFAULT_HOST``. The address must be an IP address (or ``localhost``); port 0 asks the
    kernel for a free port. Raises ``InvalidValueError`` naming what is wrong."""
    spec = text.strip() if isinstance(text, str) else text
    if isinstance(spec, str) and ":" not in spec:
        return DEFAULT_HOST, parse_int(spec, "metrics port", 0, MAX_PORT)
    if isinstance(spec, str) and spec.startswith("localhost:"):
        spec = DEFAULT_HOST + spec.removeprefix("localhost")
    return check_endpoint(spec, "metrics address", allow_zero_port=True)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address) can only be reached from this machine."""
    return ipaddress.ip_address(host).is_loopback


def check_bind(host: str, port: int, *, public: bool, flag: str = "--metrics-public") -> None:
    """Refuse to serve on a non-loopback ``host`` unless ``public`` says so (``flag`` is what the
    user adds to mean it). Nothing is bound either way."""
    if public or is_loopback(host):
        return
    raise InvalidValueError(
        f"refusing to serve metrics on {format_endpoint((host, port))}: that address is reachable "
        f"from other machines; add {flag} to mean it, or listen on 127.0.0.1"
    )


# -- the server ---------------------------------------------------------------------------------


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class MetricsServer:
    """prometheus_client's HTTP server on ``host:port`` serving ``collector`` (only it: not the
    process and platform collectors of the default registry), in a daemon thread.

    Port 0 binds a free port: ``port`` and ``url`` say which. A context manager; ``close()``
    stops the server and frees the port. Binding errors are ``OSError`` naming the address.
    """

    def __init__(self, collector: Collector, host: str = DEFAULT_HOST, port: int = 0) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)  # type: ignore[arg-type]
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            raise AddressError(err.errno, f"cannot serve metrics on "
                               f"{format_endpoint((host, port))}: {err.strerror or err} (choose "
                               "another port, or 0 for a free one)") from None
        self.collector = collector
        self.host = host
        self.port = int(self._httpd.server_port)
        self._closed = threading.Event()

    @property
    def address(self) -> str:
        return format_endpoint((self.host, self.port))

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- the engine ---------------------------------------------------------------------------------


class _Engine(Protocol):
    """What the engine collector reads (``tapengine.engine.Engine`` provides it)."""

    def stats(self) -> EngineStats: ...
    def worker_states(self) -> list[dict[str, Any]]: ...
    def ring_occupancy(self) -> dict[str, int]: ...
    @property
    def failure(self) -> BaseException | None: ...


class EngineCollector:
    """Reads ``engine`` at every scrape. ``engine`` may be set later (a server can start before
    the engine does, to fail early on a busy port); until then a scrape is empty."""

    def __init__(self, engine: _Engine | None = None) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is None:
            return
        yield from engine_metrics(engine.stats(), workers=engine.worker_states(),
                                  occupancy=engine.ring_occupancy(),
                                  failed=engine.failure is not None)  # fmt: skip


def _upper_bound(label: str) -> float:
    """The largest batch size of a histogram bucket label: ``"1"`` -> 1, ``"4-7"`` -> 7."""
    return float(label.rpartition("-")[2])


def engine_metrics(stats: EngineStats, *, workers: list[dict[str, Any]] | None = None,
                   occupancy: Mapping[str, int] | None = None,
                   failed: bool = False) -> Iterator[Metric]:  # fmt: skip
    """The metric families of one ``EngineStats`` snapshot (and, when given, the workers'
    state and the rings' occupancy)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    from tapengine.engine import EGRESS_DROPS

    def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(f"tapengine_{name}", doc, labels=labels)

    def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"tapengine_{name}", doc, labels=labels)

    packets = counter("port_packets", "Packets read from (rx) or written to (tx) the port.",
                      ["port", "direction"])
    nbytes = counter("port_bytes", "Bytes read from (rx) or written to (tx) the port.",
                     ["port", "direction"])
    errors = counter("port_errors", "Failed reads (rx) and writes (tx) of the port.",
                     ["port", "direction"])
    dropped = counter("port_dropped", "Packets dropped, by reason: egress reasons on tx, the "
                      "others on rx.", ["port", "direction", "reason"])
    batches = counter("port_batches", "Batches read from the port.", ["port"])
    flooded = counter("port_flooded", "Packets from the port flooded to every other port.",
                      ["port"])
    segmented = counter("port_segmented", "Superframes segmented in software toward the port.",
                        ["port"])
    up = gauge("port_up", "1 while the engine serves the port, 0 once it went down.", ["port"])
    link_up = gauge("port_link_up", "1 unless the port's link was seen set down.", ["port"])
    queue_packets = counter("queue_packets", "Packets per queue (one worker each).",
                            ["port", "queue", "direction"])
    queue_bytes = counter("queue_bytes", "Bytes per queue (one worker each).",
                          ["port", "queue", "direction"])
    slots = gauge("ring_slots", "Slots of each receive ring of the port (one ring per worker).",
                  ["port"])
    slot_size = gauge("ring_slot_size_bytes", "Largest frame a slot of the port's rings holds.",
                      ["port"])
    memory = gauge("ring_memory_bytes", "Memory of the port's receive rings, all workers.",
                   ["port"])
    occupied = gauge("ring_occupied_slots", "Slots of the port's rings holding a batch in "
                     "flight now, all workers.", ["port"])
    for port in stats.ports:
        name = port.name
        c = port.counters
        for direction in _DIRECTIONS:
            packets.add_metric([name, direction], c[f"{direction}_packets"])
            nbytes.add_metric([name, direction], c[f"{direction}_bytes"])
        errors.add_metric([name, "rx"], c["rx_errors"])
        errors.add_metric([name, "tx"], c["drop_tx_error"])
        for key, value in c.items():
            if key.startswith("drop_"):
                reason = key[5:]
                direction = "tx" if reason in EGRESS_DROPS else "rx"
                dropped.add_metric([name, direction, reason], value)
        batches.add_metric([name], c["rx_batches"])
        flooded.add_metric([name], c["flooded"])
        segmented.add_metric([name], c["segmented"])
        up.add_metric([name], float(port.up))
        link_up.add_metric([name], float(port.link_up))
        for k, queue in enumerate(port.queues):
            for direction in _DIRECTIONS:
                queue_packets.add_metric([name, str(k), direction],
                                         queue[f"{direction}_packets"])
                queue_bytes.add_metric([name, str(k), direction], queue[f"{direction}_bytes"])
        if port.ring:
            slots.add_metric([name], port.ring["slots"])
            slot_size.add_metric([name], port.ring["slot_size"])
            memory.add_metric([name], port.ring["bytes"] * stats.workers)
        if occupancy is not None:
            occupied.add_metric([name], occupancy.get(name, 0))
    yield from (packets, nbytes, errors, dropped, batches, flooded, segmented, up, link_up,
                queue_packets, queue_bytes, slots, slot_size, memory)
    if occupancy is not None:
        yield occupied

    # The histogram: cumulative buckets; every packet read was read in one batch, so the sum
    # of the batch sizes is the packets read from every port.
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for label, count in stats.batch_sizes.items():
        cumulative += count
        buckets.append((_float_text(_upper_bound(label)), cumulative))
    buckets.append(("+Inf", cumulative))
    yield HistogramMetricFamily(
        "tapengine_batch_size_packets", "Packets per batch read from a port.",
        buckets=buckets, sum_value=sum(port.counters["rx_packets"] for port in stats.ports),
    )  # fmt: skip

    header = counter("header_drops", "Virtio-net headers refused, by reason.", ["reason"])
    for reason, count in stats.header_drops.items():
        header.add_metric([reason], count)
    yield header

    yield GaugeMetricFamily("tapengine_engine_elapsed_seconds",
                            "Seconds since the engine started.", value=stats.elapsed)
    info = gauge("engine_info", "The engine's mode and number of workers.", ["mode", "workers"])
    info.add_metric([stats.mode, str(stats.workers)], 1)
    yield info
    yield GaugeMetricFamily("tapengine_engine_failed",
                            "1 once a worker failed and stopped the engine.", value=float(failed))
    if workers is not None:
        running = gauge("worker_running", "1 while the worker's thread runs.", ["worker"])
        passes = counter("worker_passes", "Passes of the worker's loop over its ports.",
                         ["worker"])
        sleeps = counter("worker_sleeps", "Times the worker found nothing to do and slept.",
                         ["worker"])
        for k, worker in enumerate(workers):
            running.add_metric([str(k)], float(worker["running"]))
            passes.add_metric([str(k)], worker["passes"])
            sleeps.add_metric([str(k)], worker["sleeps"])
        yield from (running, passes, sleeps)
    if stats.mac_table is not None:
        yield GaugeMetricFamily("tapengine_mac_table_entries", "MAC addresses the switch knows.",
                                value=len(stats.mac_table))
    yield from _stage_metrics(stats.stages)


#: What each per-stage counter (``StageStats.counters``) counts; others get a generic line.
_STAGE_DOCS = {
    "batches": "Batches the stage was called with.",
    "seen": "Packets the stage saw.",
    "dropped": "Packets the stage dropped (a DROP verdict).",
    "redirected": "Packets the stage sent to another port or flooded.",
    "misdirected": "Packets the stage sent to no port that exists (dropped).",
    "invalid": "Packets the stage left with an offset or length outside the slot (dropped).",
}


def _stage_metrics(stages: Iterable[Any]) -> Iterator[Metric]:
    """For each stage (a ``StageStats``: ``name`` and ``counters``) and each of its counters,
    ``tapengine_stage_<counter>_total{stage}``; the time spent in it (``ns``) as
    ``tapengine_stage_seconds_total``."""
    from prometheus_client.core import CounterMetricFamily

    families: dict[str, CounterMetricFamily] = {}
    for stage in stages:
        for key, value in stage.counters.items():
            if key == "ns":
                metric, doc, value = "stage_seconds", "Time spent in the stage.", value / 1e9
            else:
                metric = f"stage_{key}"
                doc = _STAGE_DOCS.get(key, f"The stage's {key.replace('_', ' ')} counter.")
            if metric not in families:
                families[metric] = CounterMetricFamily(f"tapengine_{metric}", doc,
                                                       labels=["stage"])
            families[metric].add_metric([stage.name], value)
    yield from families.values()


def _float_text(value: float) -> str:
    """A bucket bound as Prometheus clients write it: ``1.0``, ``511.0``, ``0.002``."""
    return repr(float(value))


# -- the sink -----------------------------------------------------------------------------------


class SinkCollector:
    """Reads a running ``Sink`` (``tapengine sink``) at every scrape, as ``sink --json`` would
    report it at that moment; ``device`` labels every series."""

    def __init__(self, sink: Sink, device: str) -> None:
        self.sink = sink
        self.device = device

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        from tapengine._pktgen import bucket_bounds
        from tapengine.traffic import SinkResult

        result = SinkResult.of(self.sink)
        labels = ["device"]
        for name, doc in (
            ("packets", "Frames read."),
            ("bytes", "Bytes of the frames read."),
            ("probe_packets", "Probe frames of tapengine gen read."),
            ("probe_bytes", "Bytes of the probe frames read."),
            ("other_packets", "Frames that are not probes."),
            ("other_bytes", "Bytes of the frames that are not probes."),
            ("untracked", "Probe frames of flows beyond --max-flows."),
            ("duplicates", "Probe frames seen twice."),
            ("reordered", "Probe frames that arrived below the highest sequence seen."),
            ("stale", "Probe frames too far behind to be judged."),
            ("negative_latency", "Probe frames stamped later than they arrived."),
        ):  # fmt: skip
            family = CounterMetricFamily(f"tapengine_sink_{name}", doc, labels=labels)
            family.add_metric([self.device], getattr(result, name))
            yield family
        for name, doc, value in (
            ("lost_packets", "Probe frames missing below the highest sequence seen per flow.",
             result.lost),
            ("flows", "Flows seen.", result.flows_seen),
        ):
            gauge = GaugeMetricFamily(f"tapengine_sink_{name}", doc, labels=labels)
            gauge.add_metric([self.device], value)
            yield gauge
        # Latency: the sink's fine buckets summed into coarse ones; a fine bucket counts
        # toward a bound only when all of it lies at or below it (so no sample is counted
        # below its value).
        counts = self.sink.histogram
        _, high = bucket_bounds()
        buckets: list[tuple[str, float]] = []
        for bound in LATENCY_BUCKETS_S:
            inside = high <= round(bound * 1e9) + 1
            buckets.append((_float_text(bound), int(counts[inside].sum())))
        total = int(counts.sum())
        buckets.append(("+Inf", total))
        c = self.sink.counters[0]
        latency = HistogramMetricFamily(
            "tapengine_sink_latency_seconds", "One-way latency of the probe frames.",
            labels=labels,
        )
        latency.add_metric([self.device], buckets, sum_value=int(c["latency_sum_ns"]) / 1e9)
        yield latency


__all__ = [
    "DEFAULT_HOST",
    "LATENCY_BUCKETS_S",
    "EngineCollector",
    "MetricsServer",
    "SinkCollector",
    "check_bind",
    "engine_metrics",
    "is_loopback",
    "parse_listen",
]
