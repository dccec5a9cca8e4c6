"""The container and the k8s manifests, checked without Docker or a cluster: the image's entrypoint command
and HEALTHCHECK command run here for real, and the manifests agree with the drain settings."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fastgw.config.root import loads
from tests.procutil import ROOT, Gateway, Origin, config

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instruction(name: str) -> list[str]:
    """Arguments of the last `name` instruction (exec form), with line continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    found = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert found, name
    args = found[-1][len(name) + 1:].strip()
    if name == "HEALTHCHECK":
        args = args.split(" CMD ", 1)[1]
    parsed = json.loads(args)
    assert isinstance(parsed, list)
    return parsed


def test_dockerfile_shape() -> None:
    stages = re.findall(r"^FROM (\S+) AS (\w+)", DOCKERFILE, re.M)
    assert [s[1] for s in stages] == ["build", "runtime"]
    assert all("slim" in s[0] for s in stages)
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    assert "gcc" not in runtime and "USER 10001" in runtime and "COPY --from=build /wheels" in runtime
    assert re.search(r"^EXPOSE 8080 9901$", runtime, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", runtime, re.M)
    assert "/healthz" in " ".join(_instruction("HEALTHCHECK"))


def test_image_entrypoint_and_healthcheck_outside_docker(tmp_path: Path) -> None:
    """Run ENTRYPOINT + CMD with the image's FASTGW_CONFIG pointing at a test config, then the HEALTHCHECK
    command against it, then stop it the way `docker stop` does (STOPSIGNAL)."""
    entry = _instruction("ENTRYPOINT") + _instruction("CMD")
    assert entry[0] == "fastgw"
    exe = shutil.which("fastgw")
    assert exe is not None, "the fastgw console script is not installed (pip install -e .)"
    origin = Origin()
    path = tmp_path / "fastgw.toml"
    path.write_text(config(origin, extra_server="workers = 2"))
    gw = Gateway(path, cmd=[exe, *entry[1:]], env={"FASTGW_CONFIG": str(path)})
    try:
        gw.wait_ready()
        health = _instruction("HEALTHCHECK")
        assert health[0] == "python"
        ok = subprocess.run([sys.executable, *health[1:]], env={**os.environ, "FASTGW_ADMIN": gw.admin},
                            timeout=10)
        assert ok.returncode == 0
        bad = subprocess.run([sys.executable, *health[1:]], env={**os.environ, "FASTGW_ADMIN": "127.0.0.1:1"},
                             capture_output=True, timeout=10)
        assert bad.returncode != 0
        stopsignal = re.search(r"^STOPSIGNAL (\w+)$", DOCKERFILE, re.M)
        assert stopsignal is not None
        gw.signal(signal.Signals[stopsignal[1]])
        assert gw.wait(15) == 0
    finally:
        gw.close()
        origin.close()


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    out = {}
    for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            out[doc["kind"]] = doc
    return out


def test_k8s_manifests_match_the_drain(manifests: dict[str, dict]) -> None:
    cfg = loads(manifests["ConfigMap"]["data"]["fastgw.toml"])
    assert cfg.server.listen == ["0.0.0.0:8080"] and cfg.admin.listen == "0.0.0.0:9901"
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sleep = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(c["lifecycle"]["preStop"]["exec"]["command"]))[1])
    drain = cfg.server.drain
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain.accept_seconds + drain.timeout_seconds
    svc = manifests["Service"]
    ann = svc["metadata"]["annotations"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert ann["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "ip"
    assert ann["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"] == "/readyz"
    delay = re.search(r"deregistration_delay.timeout_seconds=(\d+)",
                      ann["service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"])
    assert delay is not None and float(delay[1]) == drain.accept_seconds
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
