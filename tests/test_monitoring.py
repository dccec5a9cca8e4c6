"""The monitoring kit in deploy/ against a real gateway: the Grafana dashboard (deploy/grafana/fastgw.json)
and the Prometheus alert rules (deploy/prometheus/alerts.yml).

A real `prometheus` server scrapes a real gateway (and a second target nobody listens on) every second
and evaluates the alert rules; the test drives traffic that should trip some alerts and not others, then
asks Prometheus, through its HTTP API, for every panel query of the dashboard and for the state of every
rule. `promtool` (Debian's prometheus package, installed by .ci/run) checks the rules file and the live
/metrics exposition. A metric renamed in the gateway, or a query that no longer parses or matches, fails
here instead of in someone's on-call dashboard.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from certs import CA, write_pair
from conftest import free_port

from tests.procutil import ROOT, Gateway, Origin, admin_get

DASHBOARD = ROOT / "deploy" / "grafana" / "fastgw.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
API_KEY = "monitoring-key-1"
SLOW_MS = 1500           # above the p99 alert's 1 s, inside the 1..2.5 s histogram bucket
ERRORS = 150             # 502s on route "dead": over the error-ratio alert's floor of 100 responses
# Grafana's variables, as the dashboard's "All" choices and a rate window Prometheus can fill in a test
# that lasts seconds (scrapes every second: a 1m window holds every sample taken).
GRAFANA_VARS = {"$__rate_interval": "1m", "$job": ".+", "$instance": ".+", "$route": ".*"}
# Series Prometheus makes itself for every target; not the gateway's to export.
SCRAPE_SERIES = {"up"}
METRIC_NAME = re.compile(r"\b(fastgw_[a-z0-9_]+|process_[a-z0-9_]+|up)\b")    # process_*: the supervisor's, from prometheus-client


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: .ci/run installs Debian's prometheus package"
    return path


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target in the dashboard, rows included."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


def sample_names(exposition: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines()
            if line and not line.startswith("#")}


def family_names(exposition: str) -> set[str]:
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


class Prometheus:
    """`prometheus` on a free port with its own data directory, scraping `targets` as job "fastgw"."""

    def __init__(self, directory: Path, targets: list[str]) -> None:
        port = free_port()
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
               "rule_files": [str(ALERTS)],
               "scrape_configs": [{"job_name": "fastgw", "static_configs": [{"targets": targets}]}]}
        path = directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = directory / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [_tool("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.base + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready:\n" + self.log.read_text()
            time.sleep(0.1)

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(self.base + "/api/v1/" + path, params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def wait_for(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not (got := self.query(expr)):
            assert time.monotonic() < deadline, f"no result for {expr} after {timeout}s"
            time.sleep(0.2)
        return got

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def gateway_config(origin: Origin, dead_port: int, tls: tuple[str, str]) -> str:
    """Every policy whose series the dashboard shows: an API-key route with a tiny rate plan kept in a
    Redis nobody answers on (Redis errors, degraded decisions, 429s), a route to a dead upstream (502s),
    a deprecated route, a cached route, an idempotent one, usage metering (its Redis down too), a catch-all to a real origin (its /slow/<ms> answers late), and a TLS listener (certificate expiry)."""
    key = hashlib.sha256(API_KEY.encode()).hexdigest()
    return f"""
[server]
listen = ["127.0.0.1:0"]
[[server.tls]]
listen = ["127.0.0.1:0"]
cert = "{tls[0]}"
key = "{tls[1]}"
[admin]
listen = "127.0.0.1:0"
[redis]
url = "redis://127.0.0.1:{dead_port}/0"
[metering]
sink = "redis"
[upstreams.origin]
targets = ["{origin.addr}"]
[upstreams.dead]
targets = ["127.0.0.1:{dead_port}"]
[consumers.c1]
api_keys_sha256 = ["{key}"]
plan = "tiny"
[plans.tiny]
limits = [{{ rate = "2/s", burst = 2 }}]
sync = "lease"
[[routes]]
name = "api"
path = "/api/*"
upstream = "origin"
auth = ["api_key"]
[[routes]]
name = "dead"
path = "/dead/*"
upstream = "dead"
[[routes]]
name = "old"
path = "/old/*"
upstream = "origin"
lifecycle = {{ deprecated = "2026-01-01T00:00:00Z", sunset = "2099-01-01T00:00:00Z", link = "https://dev.test/migrate" }}
[cache.mon]
[[routes]]
name = "cached"
path = "/cached/*"
upstream = "origin"
cache = "mon"
[[routes]]
name = "pay"
path = "/pay/*"
upstream = "origin"
idempotency = {{}}
[[routes]]
name = "ws"
path = "/ws/*"
upstream = "origin"
websocket = true
[[routes]]
name = "all"
path = "/*"
upstream = "origin"
"""


class Monitored:
    def __init__(self, gw: Gateway, prom: Prometheus, dead_target: str) -> None:
        self.gw, self.prom, self.dead_target = gw, prom, dead_target


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    d = tmp_path_factory.mktemp("monitoring")
    origin = Origin()
    dead_port = free_port()
    cfg = d / "fastgw.toml"
    tls = write_pair(d, "api", CA("monitoring test CA").issue("api.test", ["api.test"]))
    cfg.write_text(gateway_config(origin, dead_port, tls))
    gw = Gateway(cfg, workers=1)
    prom = None
    try:
        gw.wait_ready()
        dead_target = f"127.0.0.1:{free_port()}"
        prom = Prometheus(d, [gw.admin, dead_target])
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            # One request per route first: a counter's series appears with its first increment, and
            # rate() only sees increments between two samples, so the load below must come after a
            # scrape that saw each series.
            assert c.get("/dead/x").status_code == 502
            assert c.get("/api/x").status_code == 401
            assert c.get("/slow/1").status_code == 200
            assert c.get("/old/x").headers["deprecation"] == "@1767225600"
            assert "cache-status" in c.get("/cached/x").headers
            prom.wait_for('count_over_time(fastgw_upstream_errors_total{route="dead"}[1m]) >= 2')
            prom.wait_for('count_over_time(fastgw_request_duration_seconds_count{route="all"}[1m]) >= 2')
            statuses = [c.get("/dead/x").status_code for _ in range(ERRORS)]
            assert statuses == [502] * ERRORS
            limited = [c.get("/api/x", headers={"X-API-Key": API_KEY}).status_code for _ in range(6)]
            assert 429 in limited, limited
            for _ in range(3):
                c.get("/cached/x")
            slow = [threading.Thread(target=lambda: c.get(f"/slow/{SLOW_MS}")) for _ in range(3)]
            for t in slow:
                t.start()
            for t in slow:
                t.join()
        # A reload the gateway refuses (an unknown upstream): it keeps the config it has.
        cfg.write_text(gateway_config(origin, dead_port, tls).replace('upstream = "dead"', 'upstream = "deaf"'))
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_reload_failed")
        yield Monitored(gw, prom, dead_target)
    finally:
        if prom is not None:
            prom.close()
        gw.close()
        origin.close()


def test_alert_rules_pass_promtool() -> None:
    r = subprocess.run([_tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in r.stdout


def test_alert_rules_unit_tests_pass() -> None:
    """deploy/prometheus/alerts_test.yml: every rule fires on synthetic series once its `for` has passed,
    with its labels and annotations, and stays silent below its threshold (`promtool test rules`)."""
    tests = ALERTS.with_name("alerts_test.yml")
    covered = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"]
               for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert covered == {r["alert"] for r in alert_rules()}
    r = subprocess.run([_tool("promtool"), "test", "rules", tests.name], capture_output=True, text=True,
                       cwd=tests.parent)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_live_exposition_passes_promtool(monitored: Monitored) -> None:
    """`promtool check metrics` parses the exposition and lints it (counters end in _total, HELP on
    every family, no reserved or duplicate labels...): it exits non-zero on any finding."""
    status, text, headers = admin_get(monitored.gw.admin_base + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    r = subprocess.run([_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_and_alerts_read_only_metrics_the_gateway_exports(monitored: Monitored) -> None:
    """Every metric named in a panel query or an alert is in a live scrape (or is Prometheus's `up`), and
    every family the gateway exports has a panel: a metric added without a panel fails here."""
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "fastgw" and doc["title"] == "fastgw"
    text = admin_get(monitored.gw.admin_base + "/metrics")[1]
    samples = sample_names(text)
    exprs = dashboard_exprs() + [(r["alert"], r["expr"]) for r in alert_rules()]
    assert len(exprs) > 20
    for title, expr in exprs:
        names = set(METRIC_NAME.findall(expr))
        assert names, (title, expr)
        missing = names - samples - SCRAPE_SERIES
        assert not missing, f"{title}: {sorted(missing)} not in the gateway's /metrics"
    dashboard_names = {n for _, e in dashboard_exprs() for n in METRIC_NAME.findall(e)}
    unshown = {f for f in family_names(text)
               if not any(n == f or n.startswith(f + "_") for n in dashboard_names)}
    assert not unshown, f"families without a dashboard panel: {sorted(unshown)}"


def test_every_panel_query_evaluates_on_a_real_prometheus(monitored: Monitored) -> None:
    """Each panel query, with Grafana's variables set to "All", runs without error on Prometheus and
    returns series: the traffic in the fixture gives every panel something to show."""
    prom = monitored.prom
    prom.wait_for('fastgw_config_reloads_total{result="error"} > 0')
    prom.wait_for(f'count_over_time(fastgw_upstream_errors_total{{route="dead"}}[1m]) >= 2 '
                  f'and fastgw_upstream_errors_total{{route="dead"}} > {ERRORS}')
    empty = []
    for title, expr in dashboard_exprs():
        if not prom.query(expand(expr)):
            empty.append((title, expr))
    assert not empty, f"panel queries without a series: {empty}"
    # The template variables' own queries (label_values) name real labels.
    jobs = prom.api("label/job/values", **{"match[]": "fastgw_config_version_info"})
    assert jobs == ["fastgw"]
    routes = prom.api("label/route/values", **{"match[]": "fastgw_requests_total"})
    assert set(routes) == {"all", "api", "cached", "dead", "old"}


def test_alert_rules_evaluate_and_fire_on_real_series(monitored: Monitored) -> None:
    """Every rule evaluates without error; the ones the fixture provoked are pending or firing for the
    right labels, and the others are silent."""
    prom = monitored.prom
    want = {
        ("FastgwErrorRatio", "dead"), ("FastgwUpstreamErrors", "dead"), ("FastgwLatencyP99", "all"),
        ("FastgwTargetDown", None), ("FastgwRedisErrors", None), ("FastgwConfigReloadFailed", None),
    }
    deadline = time.monotonic() + 20
    while True:
        alerts = prom.api("alerts")["alerts"]
        seen = {(a["labels"]["alertname"], a["labels"].get("route")) for a in alerts}
        if want <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert seen == want, f"missing {want - seen}, unexpected {seen - want}"
    down = [a for a in alerts if a["labels"]["alertname"] == "FastgwTargetDown"]
    assert [a["labels"]["instance"] for a in down] == [monitored.dead_target]
    upstream = [a for a in alerts if a["labels"]["alertname"] == "FastgwUpstreamErrors"]
    assert [a["labels"]["kind"] for a in upstream] == ["bad_gateway"]
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in alert_rules())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_alert_expressions_have_descriptions() -> None:
    """Each rule tells the on-call engineer what fired and where to look."""
    for r in alert_rules():
        assert r["labels"]["severity"] in ("page", "ticket"), r["alert"]
        assert r["annotations"]["summary"] and len(r["annotations"]["description"]) > 60, r["alert"]
