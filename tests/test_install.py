"""Installing and running: `make run` needs the runtime dependencies only and says what it is doing; the
build reports each module; `pip install .` gives a wheel with the compiled core that works from any
folder; a quick benchmark never overwrites the committed figures."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest

from fastgw import __version__
from tests.procutil import ROOT, Gateway, Origin, config

DEPENDENCIES = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
# The extensions setup.py builds: every .pyx but those another .pyx includes (worker.pyx's data-plane modules).
_PYX = sorted((ROOT / "fastgw" / "_core").glob("*.pyx"))
_INCLUDED = {n for p in _PYX for n in re.findall(r'^include "([^"]+)"', p.read_text(), re.M)}
MODULES = [p.stem for p in _PYX if p.name not in _INCLUDED]


def _make_dry_run(target: str) -> list[str]:
    # Under `make test` this runs as a sub-make: without the parent's MAKELEVEL/MAKEFLAGS (and with
    # --no-print-directory) it prints only the recipe's commands, as on a terminal.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_make_run_installs_the_runtime_dependencies_only() -> None:
    lines = _make_dry_run("run")
    installs = [shlex.split(line) for line in lines if " pip " in f" {line} " and " install " in line]
    assert len(installs) == 1, lines
    (pip,) = installs
    assert "-q" not in pip and "--progress-bar" in pip        # pip shows what it downloads
    assert set(DEPENDENCIES) <= set(pip)
    wanted = [a for a in pip[pip.index("install") + 1:] if not a.startswith("-") and a != "on"]
    assert set(wanted) - set(DEPENDENCIES) == {"Cython==3.3.0", "setuptools>=77", "wheel"}
    text = "\n".join(lines)
    assert "[test" not in text and "pytest" not in text
    assert 'echo "fastgw: [1/2] installing the runtime dependencies' in text
    assert 'echo "fastgw: [2/2] compiling the Cython core' in text
    assert lines[-1] == "python3 -m fastgw run -c config/fastgw.toml"
    # `make test` adds the test and dev extras on top.
    assert any("-e '.[test,dev]'" in line for line in _make_dry_run("test"))


def test_the_build_reports_each_module() -> None:
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"fastgw: compiling the core: {len(MODULES)} modules" in proc.stderr
    for i, name in enumerate(MODULES, 1):
        assert f"fastgw:   [{i}/{len(MODULES)}] fastgw._core.{name}: " in proc.stderr


def test_bench_quick_keeps_the_committed_figures() -> None:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = bench          # its dataclasses look their module up
    sys.path.insert(0, str(ROOT / "bench"))   # as when run as a script: its sibling modules (plots, progress)
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["bench_run"]
        sys.path.remove(str(ROOT / "bench"))
    for only_nginx in (False, True):
        reports, data = bench.result_files("20260101T000000Z", only_nginx, quick=True)
        assert all(not n.startswith("latest") and n.startswith("quick-") for n in (*reports, data))
        reports, data = bench.result_files("20260101T000000Z", only_nginx, quick=False)
        assert any(n.startswith("latest-") for n in reports) and data.startswith("latest-")
    assert "bench/results/quick-*" in (ROOT / ".gitignore").read_text().splitlines()


# A wheel build reuses the objects `make compile` left in build/ (seconds); on a tree where they are stale
# it compiles the core again, about two minutes on 2 cores: hence the longer timeout.
@pytest.mark.timeout(400)
def test_pip_install_gives_a_wheel_with_the_compiled_core(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=380)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("fastgw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in MODULES:
        assert any(n.startswith(f"fastgw/_core/{name}.") and n.endswith(".so") for n in names), name
    assert not any(n.endswith((".pyx", ".c")) for n in names)
    # A fresh venv; its dependencies come from this interpreter's site-packages (no index here). It gets no
    # pip of its own (ensurepip took most of this test's time): this interpreter's pip installs into it
    # (`pip --python`, pip >= 22.3), as the venv's own pip would.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                          "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=120)
    assert pip.returncode == 0, pip.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import fastgw._core.worker as p; print(p.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    exe = str(venv / "bin" / "fastgw")
    version = subprocess.run([exe, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert version.stdout == f"fastgw {__version__}\n"
    origin = Origin()
    path = tmp_path / "gw.toml"
    path.write_text(config(origin))
    gw = Gateway(path, cmd=[exe, "run", "-c", str(path), "--workers", "1"], cwd=tmp_path, env={"PYTHONPATH": ""})
    try:
        gw.wait_ready()
        assert httpx.get(gw.base + "/hello").text == "ok /hello\n"
        started = gw.wait_event("worker_started")
        cmdline = Path(f"/proc/{started['worker_pid']}/cmdline").read_bytes().split(b"\0")
        assert str(venv).encode() in b" ".join(cmdline)     # the worker runs the venv's package
    finally:
        gw.close()
        origin.close()
