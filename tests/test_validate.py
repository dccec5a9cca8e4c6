"""Request validation (fastgw/policies/validate/) against a realistic OpenAPI 3.0 payments description
(tests/specs/payments.yaml: path parameters, query parameters with an array and a date, a required header,
a JSON body with nested objects, $refs, enums, patterns, formats, nullable): valid requests reach the echo
origin byte for byte; each kind of violation is a 400 validation-failed naming where (JSON pointer or
parameter) and why, and the upstream never sees it. A real gateway process, httpx over HTTP/1.1 and HTTP/2.
The config checks: a document that does not load, a route no operation describes."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastgw.config.root import ConfigError, loads
from tests.procutil import Gateway

SPEC = Path(__file__).resolve().parent / "specs" / "payments.yaml"
GOOD = {
    "amount": {"value": "1250.00", "currency": "EUR"},
    "creditor": {"name": "ACME GmbH", "iban": "DE89370400440532013000", "bic": None},
    "debtor": {"name": "Jane Doe", "iban": "FR1420041010050500013M02606", "bic": "BNPAFRPP"},
    "execution_date": "2026-12-24",
    "reference": "invoice 4711",
    "notify": ["ops@bank.example"],
}


def config(origin: str, spec: str, extra: str = "") -> str:
    return f'''
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.echo]
targets = ["{origin}"]
[[routes]]
name = "payments"
path = "/v1/*"
upstream = "echo"
validate = {{ openapi = "{spec}", max_body = "16KiB", max_depth = 8 {extra} }}
'''


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, echo_origin: Any) -> Any:
    tmp = tmp_path_factory.mktemp("validate")
    shutil.copy(SPEC, tmp / "payments.yaml")
    cfg = tmp / "fastgw.toml"
    cfg.write_text(config(echo_origin.addr, "payments.yaml"))
    g = Gateway(cfg, workers=1)
    g.wait_ready()
    yield g
    g.close()


def failed(r: httpx.Response) -> list[dict[str, str]]:
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["type"] == "urn:fastgw:problem:validation-failed" and doc["request_id"] == r.headers["x-request-id"]
    return doc["errors"]


@pytest.mark.parametrize("http2", [False, True])
def test_valid_requests_pass_byte_identical(gw: Any, echo_origin: Any, http2: bool) -> None:
    with httpx.Client(base_url=gw.base, timeout=5, http1=not http2, http2=http2) as c:
        m = uuid.uuid4().hex
        body = json.dumps(GOOD, indent=1).encode() + b"\n"              # whitespace kept as sent
        r = c.post(f"/v1/payments?m={m}", content=body, headers={"Content-Type": "application/json",
                                                                  "X-Channel": "web"})
        assert r.status_code == 200, r.text
        got = echo_origin.requests_for(m)
        assert len(got) == 1 and got[0].body == body
        pid = str(uuid.uuid4())
        for path in (f"/v1/payments?limit=10&state=pending&state=booked&booked_after=2026-01-31&m={m}",
                     f"/v1/payments?state=pending,rejected&m={m}", f"/v1/payments/{pid}?m={m}",
                     f"/v1/payments/{pid}/refunds/9?m={m}"):
            assert c.get(path).status_code == 200, path
        r = c.patch(f"/v1/payments/{pid}?m={m}", content=b'{"reference": null}',
                    headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200
        assert len(echo_origin.requests_for(m)) == 6


def test_each_violation_names_where_and_why(gw: Any, echo_origin: Any) -> None:
    m = uuid.uuid4().hex
    hdr = {"Content-Type": "application/json", "X-Channel": "web"}

    def post(doc: Any, headers: dict[str, str] = hdr, raw: bytes | None = None) -> list[dict[str, str]]:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            return failed(c.post(f"/v1/payments?m={m}", content=raw if raw is not None else json.dumps(doc),
                                 headers=headers))

    def where(errors: list[dict[str, str]]) -> set[tuple[str, str]]:
        return {(e["in"], e.get("pointer", e.get("name", ""))) for e in errors}

    # Nested: a wrong enum, a pattern, a missing required member, an unknown member, a bad format.
    bad = json.loads(json.dumps(GOOD))
    bad["amount"]["currency"] = "XXX"
    bad["creditor"]["iban"] = "not an iban"
    del bad["debtor"]["name"]
    bad["extra"] = 1
    bad["execution_date"] = "2026-13-45"
    bad["notify"] = ["a", "b@c.example"]
    errors = post(bad)
    assert where(errors) >= {("body", "/amount/currency"), ("body", "/creditor/iban"), ("body", "/debtor"),
                             ("body", ""), ("body", "/execution_date"), ("body", "/notify/0")}, errors
    assert all(e["reason"] for e in errors)
    # nullable (OpenAPI 3.0) accepted only where declared.
    bad = json.loads(json.dumps(GOOD))
    bad["reference"] = None
    assert where(post(bad)) == {("body", "/reference")}
    # Not JSON, too deep, wrong content type, no body, a missing required header.
    assert where(post(None, raw=b'{"amount": ')) == {("body", "")}
    assert "deeper than 8" in post(None, raw=b'{"a":' * 9 + b"1" + b"}" * 9)[0]["reason"]
    assert where(post(GOOD, headers={"Content-Type": "text/plain", "X-Channel": "web"})) == {("header", "Content-Type")}
    assert where(post(None, raw=b"")) == {("body", "")}
    assert where(post(GOOD, headers={"Content-Type": "application/json"})) == {("header", "X-Channel")}
    assert where(post(GOOD, headers={**hdr, "X-Channel": "fax"})) == {("header", "X-Channel")}
    with httpx.Client(base_url=gw.base, timeout=5) as c:
        # Query and path parameters: types, bounds, enums, formats; an operation that does not exist.
        assert where(failed(c.get(f"/v1/payments?limit=0&m={m}"))) == {("query", "limit")}
        assert where(failed(c.get(f"/v1/payments?limit=ten&m={m}"))) == {("query", "limit")}
        assert where(failed(c.get(f"/v1/payments?state=lost&m={m}"))) == {("query", "state")}
        assert where(failed(c.get(f"/v1/payments?booked_after=yesterday&m={m}"))) == {("query", "booked_after")}
        assert where(failed(c.get(f"/v1/payments/not-a-uuid?m={m}"))) == {("path", "paymentId")}
        assert where(failed(c.get(f"/v1/payments/{uuid.uuid4()}/refunds/10?m={m}"))) == {("path", "n")}
        assert failed(c.delete(f"/v1/payments?m={m}"))[0]["in"] == "path"
        # max_body: 413 before any parsing.
        r = c.post(f"/v1/payments?m={m}", content=b" " * (16 * 1024 + 1), headers=hdr)
        assert r.status_code == 413
        # max_errors bounds the list.
        many = {**GOOD, "notify": [f"not-an-address-{i}" for i in range(30)]}
        assert len(post(many)) == 10
    assert echo_origin.requests_for(m) == []                # the upstream saw none of them


def test_config_checks(tmp_path: Path) -> None:
    shutil.copy(SPEC, tmp_path / "payments.yaml")
    (tmp_path / "broken.yaml").write_text("openapi: 3.0.0\npaths: [\n")
    (tmp_path / "swagger.yaml").write_text("swagger: '2.0'\npaths: {}\n")
    base = '[upstreams.u]\ntargets = ["127.0.0.1:9"]\n'

    def errors(route_path: str, spec: str) -> str:
        text = base + f'[[routes]]\nname = "r"\npath = "{route_path}"\nupstream = "u"\n' \
            f'validate = {{ openapi = "{spec}" }}\n'
        try:
            loads(text, base=str(tmp_path))
        except ConfigError as e:
            return str(e)
        return ""

    assert errors("/v1/payments/{id}", "payments.yaml") == ""
    assert errors("/v1/*", "payments.yaml") == ""
    assert "no operation" in errors("/v2/accounts/{id}", "payments.yaml")
    assert "cannot read it" in errors("/v1/payments", "broken.yaml")
    assert "only OpenAPI 3.0.x and 3.1.x" in errors("/v1/payments", "swagger.yaml")
    assert "cannot read it" in errors("/v1/payments", "missing.yaml")
