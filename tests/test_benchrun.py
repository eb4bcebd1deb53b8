"""``tapengine bench`` (``tapengine.benchrun``): scenarios, summaries, the CLI end to end."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import leftovers
from netutil import wait_until
from tapengine.benchrun import (
    BenchReport,
    RunResult,
    Selection,
    format_table,
    iperf3_argv,
    legend,
    naive_forwarder_argv,
    parse_scenarios,
    parse_sizes,
    run_bench,
    summarize,
)


def tapengine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tapengine", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode in (1, 2), result.stderr  # 2: a usage error, refused while parsing
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# -- selection and summaries -------------------------------------------------------------------


def test_scenario_groups_expand_and_keep_a_fixed_order() -> None:
    assert parse_scenarios("all") == Selection(("engine", "kernel", "naive"),
                                               ("engine", "veth", "bridge", "naive"))
    assert parse_scenarios("tcp-bridge, naive,engine") == Selection(("engine", "naive"),
                                                                     ("bridge",))
    assert parse_scenarios("frames") == Selection(("engine", "kernel", "naive"), ())
    assert parse_scenarios("tcp-readv,frames,readv") == Selection(
        ("engine", "readv", "kernel", "naive"), ("readv",))


@pytest.mark.parametrize("text", ["warp", "tcp-kernel", "", " , "])
def test_unknown_or_empty_scenarios_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="scenario"):
        parse_scenarios(text)


def test_sizes_are_checked_and_deduplicated() -> None:
    assert parse_sizes("64, imix,64") == ["64", "imix"]
    with pytest.raises(ValueError, match="invalid frame size 10"):
        parse_sizes("64,10")


def _frames(path: str, size: str, pps: float, lost: int = 0) -> RunResult:
    return RunResult(f"{path}/{size}", "frames", path, size, 1000, 1000 - lost, lost, pps,
                     pps * 480, 1000, 5000, 2 * pps)


def _tcp(path: str, bits: float) -> RunResult:
    return RunResult(f"tcp/{path}", "tcp", path, "tcp", 10**9, 10**9, 0, bits / 8 / 1448, bits,
                     50_000, None)


def test_summary_takes_medians_spreads_and_ratios_to_the_kernel_path_of_its_kind() -> None:
    report = BenchReport(3, 1.0, 1.0, "tetest", ["64"])
    report.runs = [_frames("engine", "64", pps) for pps in (100, 300, 200)]
    report.runs += [_frames("kernel", "64", pps, lost=100) for pps in (400, 500, 450)]
    report.runs += [_tcp("engine", bits) for bits in (4e9, 6e9, 5e9)]
    report.runs += [_tcp("bridge", bits) for bits in (10e9, 9e9, 11e9)]
    summarize(report)
    engine, kernel = report.scenario("engine/64"), report.scenario("kernel/64")
    assert (engine.median_pps, engine.spread_pps, engine.runs) == (200, (100, 300), 3)
    assert engine.ratio_to_kernel == pytest.approx(200 / 450)
    assert kernel.ratio_to_kernel == 1.0 and kernel.median_loss_ratio == pytest.approx(0.1)
    assert kernel.median_offered_pps == 900
    tcp = report.scenario("tcp/engine")
    assert tcp.reference == "bridge" and tcp.ratio_to_kernel == pytest.approx(0.5)
    assert tcp.median_loss_ratio is None
    table = format_table(report)
    for name in ("engine/64", "kernel/64", "tcp/engine", "tcp/bridge"):
        assert name in table
    assert "0.44x kernel" in table and "0.50x bridge" in table
    assert "flat out" in legend(report) and "iperf3" in legend(report)


def test_without_its_reference_a_scenario_has_no_ratio() -> None:
    report = BenchReport(1, 1.0, 1.0, "tetest", ["64"])
    report.runs = [_frames("engine", "64", 100.0), _tcp("naive", 1e9)]
    summarize(report)
    assert report.scenario("engine/64").ratio_to_kernel is None
    assert report.scenario("tcp/naive").ratio_to_kernel is None


# -- the peers: packaged, started in their namespace without ip --------------------------------


def test_the_naive_forwarder_is_a_module_of_the_installed_package() -> None:
    import tapengine
    from tapengine import naive_forward

    assert Path(naive_forward.__file__).parent == Path(tapengine.__file__).parent
    launcher = [sys.executable, "-m", "tapengine.nsexec", "tens", "--"]
    assert naive_forwarder_argv("tens", "ta", "tb") == [
        *launcher, sys.executable, "-m", "tapengine.naive_forward", "ta", "tb"]  # fmt: skip
    assert iperf3_argv("tens", "-s") == [*launcher, "iperf3", "-p", "5201", "-s"]


def test_the_naive_forwarder_runs_as_a_module() -> None:
    result = subprocess.run([sys.executable, "-m", "tapengine.naive_forward"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "python -m tapengine.naive_forward TAP_A" in result.stderr


@pytest.mark.privileged
def test_peers_start_in_their_namespace_through_nsexec_never_ip(
        privileged: None, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class RecordingPopen(subprocess.Popen):  # subprocess.run goes through it, too
        def __init__(self, args: list[str], *rest: object, **kwargs: object) -> None:
            started.append(list(args))
            super().__init__(args, *rest, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    report = run_bench(Selection(("naive",), ("naive",)), ["64"], rounds=1, duration=0.3,
                       tcp_duration=1, prefix=prefix)  # fmt: skip
    assert {run.scenario for run in report.runs} == {"naive/64", "tcp/naive"}
    assert all(run.received > 0 for run in report.runs)
    assert all("ip" not in argv for argv in started)
    peers = [argv for argv in started if "iperf3" in argv or "tapengine.naive_forward" in argv]
    assert all(argv[1:3] == ["-m", "tapengine.nsexec"] for argv in peers)
    programs = [argv[argv.index("--") + 1:] for argv in peers]
    assert [p[1:3] for p in programs if p[0] == sys.executable] == [
        ["-m", "tapengine.naive_forward"]] * 2   # the packaged baseline, in both labs
    assert sum(p[0] == "iperf3" for p in programs) == 2   # server in B, client in A


# -- command line: bad input -------------------------------------------------------------------


def test_help_shows_an_example() -> None:
    result = tapengine("bench", "--help")
    assert result.returncode == 0
    assert "example:" in result.stdout and "tapengine bench --quick" in result.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--scenarios", "warp"], ["unknown scenario 'warp'", "tcp-engine"]),
        (["--sizes", "64,10"], ["invalid frame size 10"]),
        (["--sizes", "huge"], ["invalid size 'huge'"]),
        (["--rate", "12foo"], ["invalid rate '12foo'"]),
        (["--rounds", "0"], ["--rounds"]),
        (["--duration", "-1"], ["--duration"]),
        (["--tcp-duration", "0.5"], ["--tcp-duration"]),
        (["--prefix", "Bad/Name"], ["--prefix"]),
        (["--plot", "/nonexistent-dir/x.png"], ["/nonexistent-dir"]),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], words: list[str]) -> None:
    assert_one_line_error(tapengine("bench", *args), *words)


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; from tapengine.cli import main; "
            f"sys.exit(main(['bench', '--plot', {str(tmp_path / 'x.png')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert_one_line_error(result, "matplotlib", "pip install")
    assert not (tmp_path / "x.png").exists()


def test_tcp_without_iperf3_says_so_before_building_anything() -> None:
    result = subprocess.run([sys.executable, "-m", "tapengine", "bench", "--scenarios", "tcp"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": "/nonexistent"})  # fmt: skip
    assert_one_line_error(result, "iperf3 is not installed", "--scenarios frames")


# -- command line: real runs -------------------------------------------------------------------

ALL = {"engine/64", "kernel/64", "naive/64", "tcp/engine", "tcp/veth", "tcp/bridge", "tcp/naive"}


@pytest.mark.privileged
def test_bench_json_has_every_scenario_with_medians_and_ratios(
        privileged: None, prefix: str, tmp_path: Path) -> None:
    from PIL import Image  # matplotlib's dependency; both are in the test extra

    plot = tmp_path / "bench.png"
    result = tapengine("bench", "--sizes", "64", "--rounds", "2", "--duration", "0.3",
                       "--tcp-duration", "1", "--json", "--plot", str(plot), "--prefix", prefix,
                       timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[1/14]" in result.stderr and "[14/14]" in result.stderr   # live progress
    report = json.loads(result.stdout)
    assert report["prefix"] == prefix
    scenarios = {s["scenario"]: s for s in report["scenarios"]}
    assert set(scenarios) == ALL
    for name, summary in scenarios.items():
        runs = [run for run in report["runs"] if run["scenario"] == name]
        assert summary["runs"] == len(runs) == 2
        assert summary["median_pps"] == statistics.median(run["pps"] for run in runs)
        assert summary["median_bits_per_s"] == statistics.median(run["bits_per_s"]
                                                                 for run in runs)
        assert summary["median_bits_per_s"] > 0
        reference = scenarios["kernel/64" if summary["kind"] == "frames" else "tcp/bridge"]
        key = "median_pps" if summary["kind"] == "frames" else "median_bits_per_s"
        assert summary["ratio_to_kernel"] == pytest.approx(summary[key] / reference[key])
    for run in report["runs"]:
        if run["kind"] == "frames":
            assert run["received"] + run["lost"] == run["sent"] > 0
            assert run["p50_ns"] <= run["p99_ns"]
            assert run["offered_pps"] > 0
    # the runs alternate: no scenario runs twice before every other of its kind ran once
    order = [run["scenario"] for run in report["runs"]]
    assert sorted(order[:3]) == sorted(order[3:6]) == ["engine/64", "kernel/64", "naive/64"]
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    # the kernel destroys namespaces, and the veth ends in them, after the run has returned
    wait_until(lambda: leftovers(prefix) == [], 30, "the run's namespaces and links to go")


@pytest.mark.privileged
def test_sigterm_mid_run_removes_everything(privileged: None, prefix: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tapengine", "bench", "--sizes", "64",
                             "--rounds", "20", "--duration", "1", "--prefix", prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "[1/" in line:
                break
        assert leftovers(prefix)        # the labs are up
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert leftovers(prefix) == []
