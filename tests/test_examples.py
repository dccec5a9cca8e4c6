"""examples/: every config passes `fastgw check` as a user would run it (its certificates in place, from
another working directory), the index lists exactly the files, and the partner API example serves."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.certs import CA
from tests.procutil import ROOT, Gateway, Origin

EXAMPLES = ROOT / "examples"
FILES = sorted(EXAMPLES.glob("*.toml"))
# Host names that exist only where the example runs (a cluster's service names): `check` warns, no more.
CLUSTER_ONLY = re.compile(r'host "[a-z0-9.-]+\.svc\.cluster\.local" does not resolve here')


def _with_files(src: Path, dest: Path) -> Path:
    """A copy of example `src` in `dest`, with a PEM file at every relative path it names (made by a test
    CA, as a user would put theirs there)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / src.name
    shutil.copy(src, path)
    ca = CA("example-ca")
    cert, key = ca.issue("api.example.com", dns=["api.example.com"])
    for rel in re.findall(r'^\s*(?:cert|key|client_ca|ca)\s*=\s*"([^"/][^"]*)"', src.read_text(), re.M):
        f = dest / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(key if rel.endswith(".key") else (ca.pem() if "ca" in Path(rel).stem else cert))
    return path


def test_index_lists_every_example() -> None:
    index = (EXAMPLES / "README.md").read_text()
    listed = sorted(re.findall(r"\]\(([a-z0-9-]+\.toml)\)", index))
    assert listed == [p.name for p in FILES]
    assert len(FILES) >= 5


@pytest.mark.parametrize("src", FILES, ids=lambda p: p.name)
def test_example_passes_check(src: Path, tmp_path: Path) -> None:
    path = _with_files(src, tmp_path / "conf")
    proc = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{path}: OK")
    for line in proc.stderr.splitlines():
        assert line.startswith("warning: ") and CLUSTER_ONLY.search(line), line


def test_partner_api_example_serves(tmp_path: Path) -> None:
    src = EXAMPLES / "partner-api.toml"
    raw = tomllib.loads(src.read_text())
    origin = Origin()
    # The example as written, with loopback ports a test can take and its origin.
    text = (src.read_text().replace('listen = ["0.0.0.0:8080"]', 'listen = ["127.0.0.1:0"]')
            .replace('listen = "127.0.0.1:9901"', 'listen = "127.0.0.1:0"')
            .replace('targets = ["127.0.0.1:9000"]', f'targets = ["{origin.addr}"]'))
    assert text.count("127.0.0.1:0") == 2 and origin.addr in text
    path = tmp_path / "partner-api.toml"
    path.write_text(text)
    gw = Gateway(path, workers=1)
    try:
        gw.wait_ready()
        acme, globex = {"X-API-Key": "demo-key-acme-0001"}, {"X-API-Key": "demo-key-globex-0002"}
        # The keys in the comments are the ones whose hashes the consumers hold.
        assert hashlib.sha256(b"demo-key-acme-0001").hexdigest() in raw["consumers"]["acme"]["api_keys_sha256"]
        with httpx.Client(base_url=gw.base) as c:
            r = c.get("/v1/orders/42", headers=acme)
            assert r.status_code == 200 and r.text == "ok /v1/orders/42\n"
            assert "ratelimit-policy" in r.headers
            assert c.get("/v1/orders/42").status_code == 401
            assert c.post("/v1/orders/42", headers=globex, content=b"{}").status_code == 403
            assert c.post("/v1/orders/42", headers=acme, content=b"{}").status_code == 200
            assert c.get("/status").status_code == 200
    finally:
        gw.close()
        origin.close()
