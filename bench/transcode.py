#!/usr/bin/env python3
"""Transcoding cost: microseconds per request for the HTTP/JSON -> gRPC work itself (the request message
from a ~1 KiB JSON body, path variable and query; the response message back to JSON), measured in process
on the code the gateway runs (fastgw/policies/transcode/codec.py), without the network.

A unary method with a nested message, int64, an enum and repeated fields; the descriptor set is compiled
here with grpcio-tools. Reports the median of --rounds runs of --n calls each, per direction, and the share
of the protobuf package's json_format in it (cProfile), so a slow figure says where the time goes.

Usage:  python3 bench/transcode.py [--rounds 5] [--n 2000]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from progress import Progress  # noqa: E402

PROTOS = {
    "google/api/http.proto": """syntax = "proto3"; package google.api;
message HttpRule { string selector = 1; oneof pattern { string get = 2; string put = 3; string post = 4;
  string delete = 5; string patch = 6; CustomHttpPattern custom = 8; } string body = 7;
  string response_body = 12; repeated HttpRule additional_bindings = 11; }
message CustomHttpPattern { string kind = 1; string path = 2; }""",
    "google/api/annotations.proto": """syntax = "proto3"; package google.api;
import "google/api/http.proto"; import "google/protobuf/descriptor.proto";
extend google.protobuf.MethodOptions { HttpRule http = 72295728; }""",
    "pay.proto": """syntax = "proto3"; package bench.v1; import "google/api/annotations.proto";
enum Kind { KIND_UNSPECIFIED = 0; SEPA = 1; SWIFT = 2; }
message Money { string currency = 1; int64 units = 2; int32 nanos = 3; }
message Party { string name = 1; string iban = 2; string bic = 3; repeated string address = 4; }
message Payment { string id = 1; Kind kind = 2; Money amount = 3; Party debtor = 4; Party creditor = 5;
  string reference = 6; repeated string tags = 7; int64 created_at = 8; map<string, string> meta = 9; }
message CreateRequest { string account = 1; Payment payment = 2; bool dry_run = 3; }
service Payments { rpc Create(CreateRequest) returns (Payment) {
  option (google.api.http) = { post: "/v1/accounts/{account}/payments" body: "payment" }; } }""",
}

BODY = {"id": "p-000123", "kind": "SEPA", "amount": {"currency": "EUR", "units": "9007199254740993", "nanos": 5},
        "debtor": {"name": "Ada Lovelace", "iban": "DE89370400440532013000", "bic": "COBADEFFXXX",
                   "address": ["12 Analytical Street", "London", "United Kingdom"]},
        "creditor": {"name": "Grace Hopper", "iban": "FR1420041010050500013M02606", "bic": "PSSTFRPPXXX",
                     "address": ["1 Compiler Avenue", "Arlington", "United States"]},
        "reference": "Invoice 2026-12-0042 for consulting services, December", "tags": ["b2b", "recurring", "eur"],
        "createdAt": "1764806400", "meta": {"channel": "api", "batch": "7", "origin": "partner-portal",
                                             "note": "x" * 300}}


def descriptors(d: Path) -> Path:
    import grpc_tools
    for name, text in PROTOS.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    out = d / "pay.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{d}",
                    f"-I{Path(grpc_tools.__file__).parent / '_proto'}", f"--descriptor_set_out={out}",
                    "--include_imports", "pay.proto"], check=True, cwd=d)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args(argv)
    from fastgw.policies.transcode import codec
    from fastgw.policies.transcode.descriptors import load
    with tempfile.TemporaryDirectory() as tmp:
        svc = load(str(descriptors(Path(tmp))), "bench.v1.Payments")
    b = svc.bindings[0]
    body = json.dumps(BODY).encode()
    groups = b.regex.fullmatch("/v1/accounts/acc-42/payments").groups()   # type: ignore[union-attr]
    query = b"?dry_run=true"
    from google.protobuf import json_format
    from google.protobuf.internal import api_implementation
    reply = b.output()
    json_format.ParseDict(BODY, reply)                 # the method returns the payment it created
    payload = reply.SerializeToString()
    progress = Progress("transcode", 2 * args.rounds, per_step=1.0)
    req_us, resp_us = [], []
    for r in range(args.rounds):
        progress.step(f"request round {r + 1}/{args.rounds}")
        t0 = time.perf_counter()
        for _ in range(args.n):
            codec.request(b, groups, query, body)
        req_us.append((time.perf_counter() - t0) / args.n * 1e6)
        progress.step(f"response round {r + 1}/{args.rounds}")
        t0 = time.perf_counter()
        for _ in range(args.n):
            codec.response(b, payload)
        resp_us.append((time.perf_counter() - t0) / args.n * 1e6)
    progress.finish()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        codec.request(b, groups, query, body)
        codec.response(b, payload)
    prof.disable()
    stats = pstats.Stats(prof).stats      # type: ignore[attr-defined]
    own = sum(v[2] for k, v in stats.items() if "json_format" in k[0])
    every = sum(v[2] for v in stats.values()) or 1.0
    print(f"JSON body {len(body)} bytes, message {len(payload)} bytes, protobuf runtime {api_implementation.Type()}")
    print(f"request  (JSON -> message): {statistics.median(req_us):.1f} us (median of {args.rounds} x {args.n})")
    print(f"response (message -> JSON): {statistics.median(resp_us):.1f} us")
    print(f"json_format's own time: {own / every * 100:.0f}% of the profiled time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
