"""How workers start: the supervisor's own package, whatever the working directory holds, and a worker
that cannot start is a clear failure within seconds, not a gateway serving nothing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procutil import ROOT, Gateway, Origin, config


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


def test_a_fastgw_folder_in_the_working_directory_does_not_shadow_the_package(origin: Origin,
                                                                              tmp_path: Path) -> None:
    """Running the gateway from inside an uncompiled checkout: the working directory holds a fastgw/
    source folder without the compiled core. The workers must run the package the supervisor runs."""
    cwd = tmp_path / "checkout"
    shutil.copytree(ROOT / "fastgw", cwd / "fastgw", ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    assert not list((cwd / "fastgw" / "_core").glob("*.so"))
    path = tmp_path / "gw.toml"
    path.write_text(config(origin))
    # The supervisor imports this tree's (compiled) package, as an installed `fastgw` would be found.
    boot = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from fastgw.cli import main; sys.exit(main())"
    gw = Gateway(path, cmd=[sys.executable, "-c", boot, "run", "-c", str(path), "--workers", "2"], cwd=cwd)
    try:
        gw.wait_ready()
        ready = [e for e in gw.events if e.get("event") == "worker_ready"]
        assert len(ready) == 2
        assert not [e for e in gw.events if e.get("event") in ("worker_restart", "worker_start_failed")]
    finally:
        gw.close()


def test_a_worker_that_cannot_start_stops_the_gateway_with_a_clear_error(origin: Origin, tmp_path: Path) -> None:
    """The worker's process exits before it is ready (here: a wrapper that cannot run it): within
    seconds the gateway exits 1 (a runtime failure), says which worker and how it ended on stderr, and
    logs worker_start_failed; it does not restart it for ever while serving nothing."""
    script = tmp_path / "broken.sh"
    script.write_text('echo "broken worker: cannot start" >&2\nexit 7\n')
    path = tmp_path / "gw.toml"
    path.write_text(config(origin))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fastgw", "run", "-c", str(path), "--workers", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30,
                          env={**__import__("os").environ, "FASTGW_WORKER_WRAPPER": f"sh {script}"})
    took = time.monotonic() - t0
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert took < 10.0
    assert "broken worker: cannot start" in proc.stderr            # the worker's own words, on stderr
    assert "could not start" in proc.stderr and "exit code 7" in proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "worker_start_failed"]
    assert failed and failed[0]["code"] == 7 and failed[0]["level"] == "error"
    assert not [e for e in events if e.get("event") == "worker_restart"]
