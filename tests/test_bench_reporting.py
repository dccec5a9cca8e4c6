"""What the benchmarks tell while they run and the pictures they leave: bench/progress.py (step, count, time
left on stderr), bench/plots.py (PNG plots drawn from the markdown results) and a real, short run of
bench/run.py against nginx that must show its progress and write its plot."""
from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest

from tests.procutil import ROOT

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"


def _bench_module(name: str):
    """Load bench/<name>.py by path: bench/ on sys.path would put bench/h2.py in place of the h2 package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


plots = _bench_module("plots")
Progress = _bench_module("progress").Progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_says_step_count_elapsed_and_time_left() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("proxy", 4, per_step=10, heartbeat=0, out=out, clock=clock)
    p.step("3b c64 round 1/2 nginx", 10)
    clock.t += 12
    p.step("3b c64 round 1/2 fastgw")
    clock.t += 4
    p.note("half way")
    clock.t += 8
    p.step("3b c64 round 2/2 fastgw")
    clock.t += 75
    p.step("3b c64 round 2/2 nginx")
    clock.t += 1
    p.finish("4 runs")
    assert out.getvalue().splitlines() == [
        "[proxy 1/4 0:00] 3b c64 round 1/2 nginx (~0:10) | ~0:40 left",   # the caller's estimate
        "[proxy 2/4 0:12] 3b c64 round 1/2 fastgw | ~0:36 left",          # 3 steps x the measured 12 s
        "[proxy 2/4 0:16] 3b c64 round 1/2 fastgw ... half way | ~0:32 left",
        "[proxy 3/4 0:24] 3b c64 round 2/2 fastgw | ~0:24 left",
        "[proxy 4/4 1:39] 3b c64 round 2/2 nginx | ~0:33 left",
        "[proxy done in 1:40] 4 runs",
    ]


def test_a_long_step_repeats_its_line() -> None:
    """A step longer than the heartbeat says so, without the caller doing anything."""
    out = io.StringIO()
    p = Progress("callgrind", 2, heartbeat=0.2, out=out)
    p.step("plain run 1/3")
    time.sleep(0.7)
    p.finish()
    lines = out.getvalue().splitlines()
    beats = [x for x in lines if "in this step" in x]
    assert lines[0].startswith("[callgrind 1/2 0:00] plain run 1/3") and beats, lines
    assert all(x.startswith("[callgrind 1/2 0:0") and "plain run 1/3 ... 0:0" in x for x in beats), beats
    assert lines[-1].startswith("[callgrind done in 0:0")


def test_plot_figures_are_the_recorded_ones() -> None:
    """The proxy plot's dots are the rounds of the committed result (its JSON twin says what they are)."""
    doc = json.loads((RESULTS / "latest-proxy.json").read_text())
    result = plots.parse((RESULTS / "latest-proxy.md").read_text())
    assert result.per_round and result.systems() == ["nginx", "fastgw"]
    assert result.groups() == list(dict.fromkeys(f"{r['scenario']} c{r['conns']}" for r in doc["runs"]))
    for run in doc["runs"]:
        cell = result.cells[(f"{run['scenario']} c{run['conns']}", run["system"])]
        assert run["rps"] == pytest.approx(cell.values["rps"][run["round"]], abs=0.5)
        assert run["p99_ms"] == pytest.approx(cell.values["p99_ms"][run["round"]], abs=5e-4)
        assert run["cpu_per_100k"] * 10 == pytest.approx(cell.values["cpu_us"][run["round"]], abs=5e-3)


def test_markdown_without_rounds_gives_medians() -> None:
    # A dated result written before the reports had an "Every round" table (latest-jwt.md changes with each run).
    result = plots.parse((RESULTS / "20261123T120916Z-jwt.md").read_text())
    assert not result.per_round
    assert result.groups() == ["c64", "c1"] and result.systems() == ["nginx", "fastgw", "fastgw+jwt"]
    assert result.cells[("c64", "fastgw+jwt")].values["rps"] == [67146.0]
    h2 = plots.parse((RESULTS / "h2-20261123-120928.md").read_text())
    assert h2.per_round and h2.cells[("", "fastgw h2c")].values == {"rps": [16597.0, 17044.0, 16137.0]}


def test_committed_plots_cover_every_latest_result(tmp_path: Path) -> None:
    """Each kind's latest result has its PNG committed beside it (docs/benchmarks.md shows them), and the
    plots can be drawn again from the markdown alone."""
    sources = plots.latest_sources(str(RESULTS))
    assert set(sources) == set(plots.KINDS)
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    for kind, src in sources.items():
        committed = RESULTS / f"latest-{kind}.png"
        assert committed.exists(), committed
        assert f"results/latest-{kind}.png" in docs, kind
        png = plots.write(src, str(tmp_path / f"{kind}.png"))
        img = matplotlib.image.imread(png)
        assert img.shape[0] > 300 and img.shape[1] > 500, (kind, img.shape)
        assert img[..., :3].std() > 0.05, kind                       # not a blank canvas


def test_every_bench_script_shows_progress() -> None:
    scripts = [p for p in BENCH.glob("*.py") if '__name__ == "__main__"' in p.read_text()
               and p.name not in ("plots.py",)]
    assert len(scripts) >= 10
    quiet = [p.name for p in scripts if not re.search(r"\bProgress\(", p.read_text())]
    assert not quiet, f"bench scripts without progress: {quiet}"


def test_quick_proxy_run_shows_progress_and_writes_its_plot(tmp_path: Path) -> None:
    """bench/run.py for real (nginx and fastgw, wrk), one short round: progress on stderr while it runs,
    then the markdown, the JSON and the PNG in the results directory it was given."""
    r = subprocess.run([sys.executable, str(BENCH / "run.py"), "--rounds", "1", "--duration", "1", "--warmup", "0",
                        "--scenarios", "3b", "--conns", "8", "--results-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = re.findall(r"^\[proxy (\d)/2 \d:\d\d\] 3b c8 round 1/1 (\w+)", r.stderr, re.M)
    assert steps == [("1", "nginx"), ("2", "fastgw")], r.stderr
    assert re.search(r"^\[proxy 2/2 .*\| ~0:0\d left$", r.stderr, re.M), r.stderr
    assert re.search(r"^\[proxy done in 0:\d\d\]", r.stderr, re.M)
    assert f"plot: {tmp_path}/latest-proxy.png" in r.stderr
    result = plots.parse((tmp_path / "latest-proxy.md").read_text())
    assert result.systems() == ["nginx", "fastgw"] and result.groups() == ["3b c8"]
    assert all(len(c.values["rps"]) == 1 and c.values["rps"][0] > 0 for c in result.cells.values())
    assert matplotlib.image.imread(str(tmp_path / "latest-proxy.png")).shape[0] > 300
