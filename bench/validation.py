#!/usr/bin/env python3
"""Microseconds to validate a 1 KiB JSON payment body against its OpenAPI schema, per JSON Schema library
(the choice behind fastgw/policies/validate/openapi.py), and the whole policy check the gateway runs per
request (JSON decode + schema) with the chosen one.

Candidates: jsonschema-rs (Rust), fastjsonschema (generates Python code), jsonschema (pure Python). The
schema is tests/specs/payments.yaml's PaymentRequest (nested objects, $refs, enums, patterns, formats),
converted from OpenAPI 3.0 by openapi.py; each library gets it in the dialect it implements (fastjsonschema:
draft-07, which has everything this schema uses). Each figure is the best of 5 rounds of N calls, for a
valid body and for one with 3 violations (all errors collected where the library can).

    python3 bench/validation.py
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fastjsonschema  # noqa: E402
import jsonschema  # noqa: E402
import jsonschema_rs  # noqa: E402
import msgspec  # noqa: E402
import yaml  # noqa: E402

from fastgw.policies.validate.openapi import _convert30  # noqa: E402

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from progress import Progress  # noqa: E402

N = 5000
ROUNDS = 5
GOOD = {
    "amount": {"value": "1250.00", "currency": "EUR"},
    "creditor": {"name": "ACME Handels- und Vertriebsgesellschaft mbH", "iban": "DE89370400440532013000",
                 "bic": None, "address": {"street": "Industriestrasse 112", "postcode": "60311",
                                          "city": "Frankfurt am Main", "country": "DE"}},
    "debtor": {"name": "Jane Doe", "iban": "FR1420041010050500013M02606", "bic": "BNPAFRPP",
               "address": {"street": "12 rue de la Paix", "postcode": "75002", "city": "Paris", "country": "FR"}},
    "execution_date": "2026-12-24",
    "reference": ("invoice 4711 / order 2026-000123 / customer 99812 / " + "x" * 140)[:140],
    "urgency": "normal",
    "notify": ["payments-operations@bank.example", "treasury.settlements@acme-handels.example",
               "accounts.payable.notifications@acme-vertrieb.example"],
}


def best(fn: Callable[[], Any]) -> float:
    out = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(N):
            fn()
        out.append((time.perf_counter() - t0) / N * 1e6)
    return min(out)


def main() -> None:
    doc = yaml.safe_load(open(os.path.join(ROOT, "tests", "specs", "payments.yaml")))
    components = _convert30(doc["components"])
    schema = {"$ref": "#/components/schemas/PaymentRequest", "components": components}
    schema7 = {"$ref": "#/definitions/PaymentRequest", "definitions": components["schemas"]}
    schema7 = json.loads(json.dumps(schema7).replace("#/components/schemas/", "#/definitions/"))
    body = json.dumps(GOOD, indent=4).encode()     # pretty-printed, as many clients send it: ~1 KiB
    bad = json.loads(body)
    bad["amount"]["currency"] = "XXX"
    bad["creditor"]["iban"] = "nope"
    bad["execution_date"] = "2026-13-45"
    rs = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    fj = fastjsonschema.compile(schema7, formats={})
    js = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    good = msgspec.json.decode(body)
    assert rs.is_valid(good) and js.is_valid(good)
    fj(good)

    def fj_errors(d: Any) -> int:
        try:
            fj(d)
            return 0
        except fastjsonschema.JsonSchemaException:
            return 1                       # fastjsonschema stops at the first error

    cases = [
        ("jsonschema-rs", lambda: rs.is_valid(good), lambda: list(rs.iter_errors(bad))),
        ("fastjsonschema", lambda: fj(good), lambda: fj_errors(bad)),
        ("jsonschema", lambda: js.is_valid(good), lambda: list(js.iter_errors(bad))),
    ]
    progress = Progress("validation", len(cases) + 1, heartbeat=0)
    print(f"body {len(body)} bytes; best of {ROUNDS} x {N} calls; microseconds per call")
    print(f"{'library':16} {'valid':>8} {'3 errors':>9}  errors found")
    for name, ok, ko in cases:
        progress.step(name)
        found = ko()
        print(f"{name:16} {best(ok):8.1f} {best(ko):9.1f}  {found if isinstance(found, int) else len(found)}")
    progress.step("policy path")
    whole = best(lambda: list(rs.iter_errors(msgspec.json.decode(body))))
    print(f"policy check with jsonschema-rs (msgspec decode + iter_errors, valid body): {whole:.1f} us")
    progress.finish()


if __name__ == "__main__":
    main()
