"""Parsing of rates, sizes and addresses, and latency percentiles from the histogram."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tapengine import _pktgen
from tapengine.traffic import (
    GenConfig,
    Rate,
    SizeMix,
    min_size,
    parse_ip,
    parse_mac,
    parse_rate,
    parse_size,
    percentile,
    written_lengths,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100kpps", Rate(100_000, "pps")),
        ("1.5Mpps", Rate(1_500_000, "pps")),
        ("20000", Rate(20_000, "pps")),
        ("250pps", Rate(250, "pps")),
        ("1gbit", Rate(10**9, "bit")),
        ("500mbit", Rate(500 * 10**6, "bit")),
        ("10Gbit/s", Rate(10 * 10**9, "bit")),
        (" 64 kbit ", Rate(64_000, "bit")),
    ],
)
def test_parse_rate_accepts_packets_and_bits(text: str, expected: Rate) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["max", "unlimited", "0"])
def test_parse_rate_unlimited(text: str) -> None:
    assert parse_rate(text) is None


@pytest.mark.parametrize("text", ["12foo", "", "kpps", "-5kpps", "1.2.3pps", "0.0001pps", "2tbit"])
def test_parse_rate_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_parse_rate_refuses_ambiguous_bps() -> None:
    with pytest.raises(ValueError, match="ambiguous"):
        parse_rate("10mbps")


def test_imix_is_7_4_1_and_interleaved() -> None:
    mix = parse_size("imix")
    pattern = mix.pattern()
    assert Counter(pattern) == {64: 7, 570: 4, 1518: 1}
    # smooth: never more than two 64-byte frames in a row
    runs = max(len(run) for run in "".join("s" if s == 64 else "|" for s in pattern).split("|"))
    assert runs <= 2


def test_parse_size_weights_and_lists() -> None:
    assert Counter(parse_size("64:3,1518:1").pattern()) == {64: 3, 1518: 1}
    assert parse_size("64,1518").pattern() in ([64, 1518], [1518, 64])
    assert parse_size("128") == SizeMix.fixed(128)


@pytest.mark.parametrize("text", ["10", "63", "99999", "64:0", "big", "64,,1518", "64:x"])
def test_parse_size_refuses_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_written_lengths_drop_fcs_and_ethernet_header() -> None:
    mix = SizeMix.fixed(128)
    assert written_lengths(mix, mode="tap", ipv6=False) == [124]
    assert written_lengths(mix, mode="tun", ipv6=False) == [110]


def test_ipv6_needs_bigger_frames_but_imix_adapts() -> None:
    assert min_size(ipv6=False) == 64
    assert min_size(ipv6=True) == 84
    with pytest.raises(ValueError, match="minimum is 84"):
        written_lengths(parse_size("64"), mode="tap", ipv6=True)
    lengths = written_lengths(parse_size("imix"), mode="tap", ipv6=True)
    assert Counter(lengths) == {80: 7, 566: 4, 1514: 1}


def test_addresses_parse_and_family_must_match() -> None:
    assert parse_mac("02:77:00:00:00:0a") == bytes([2, 0x77, 0, 0, 0, 10])
    assert parse_ip("10.77.0.1", ipv6=False) == bytes([10, 77, 0, 1])
    with pytest.raises(ValueError, match="IPv6 address but the traffic is IPv4"):
        parse_ip("fd77::1", ipv6=False)
    with pytest.raises(ValueError, match="MAC"):
        parse_mac("02:77:00:00:00")
    with pytest.raises(ValueError, match="invalid IP"):
        parse_ip("10.77.0.300", ipv6=False)


def test_config_builds_a_generator_with_the_asked_rate() -> None:
    gen = GenConfig(rate=parse_rate("1gbit"), sizes=parse_size("imix"), flows=4).generator()
    assert gen.rate == 10**9 and gen.rate_bits
    assert gen.flows == 4
    assert Counter(gen.lengths.tolist()) == {60: 7 * 21, 566: 4 * 21, 1514: 21}


def test_config_refuses_ports_past_65535() -> None:
    with pytest.raises(ValueError, match="ports"):
        GenConfig(src_port=65000, flows=1000).generator()


def test_histogram_buckets_cover_every_value_once() -> None:
    low, high = _pktgen.bucket_bounds()
    assert low[0] == 0
    assert np.all(low[1:] == high[:-1])
    for ns in [0, 1, 31, 32, 33, 63, 64, 65, 1000, 123_456_789, 2**40 + 12345, 2**63 + 5]:
        index = _pktgen.histogram_index(ns)
        assert low[index] <= ns < high[index] or (index == len(low) - 1 and ns >= low[index])
    widths = (high - low)[32:].astype(float) / low[32:].astype(float)
    assert widths.max() <= 1 / 32


@pytest.mark.parametrize("q", [50, 90, 99, 100])
def test_percentile_is_within_one_bucket_of_the_exact_value(q: float) -> None:
    rng = np.random.default_rng(7)
    samples = rng.lognormal(mean=10, sigma=1.2, size=5000).astype(np.uint64)
    hist = np.zeros(_pktgen.HISTOGRAM_BUCKETS, dtype=np.uint64)
    for value in samples:
        hist[_pktgen.histogram_index(int(value))] += 1
    exact = int(np.sort(samples)[math.ceil(q / 100 * len(samples)) - 1])  # nearest rank
    got = percentile(hist, q)
    assert abs(got - exact) <= exact / 32 + 1


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile(np.zeros(_pktgen.HISTOGRAM_BUCKETS, dtype=np.uint64), 50)
