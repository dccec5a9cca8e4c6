"""HTTP/JSON -> gRPC transcoding (fastgw/policies/transcode/, fastgw/_core/transcode.pyx) against a real
grpcio server: a .proto with path variables, nested messages, int64, enums, repeated fields, a
server-streaming method and google.api.http rules (body "*" and a field body, additional_bindings, a method
without a rule), compiled here into a descriptor set with grpcio-tools. The proto3 JSON mapping both ways,
the gRPC status of every code as its HTTP status with problem+json, malformed JSON and unknown fields as
400s, unknown methods as 404, client streaming as 501, NDJSON streaming, and `fastgw check`'s list."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.procutil import ROOT, Gateway

# The google.api.http annotation, written here (googleapis' http.proto and annotations.proto declare the
# same fields and extension number; only those are needed to compile the rules into the descriptor set).
HTTP_PROTO = """syntax = "proto3";
package google.api;
message HttpRule {
  string selector = 1;
  oneof pattern {
    string get = 2; string put = 3; string post = 4; string delete = 5; string patch = 6;
    CustomHttpPattern custom = 8;
  }
  string body = 7;
  string response_body = 12;
  repeated HttpRule additional_bindings = 11;
}
message CustomHttpPattern { string kind = 1; string path = 2; }
"""
ANNOTATIONS_PROTO = """syntax = "proto3";
package google.api;
import "google/api/http.proto";
import "google/protobuf/descriptor.proto";
extend google.protobuf.MethodOptions { HttpRule http = 72295728; }
"""
BANK_PROTO = """syntax = "proto3";
package bank.v1;
import "google/api/annotations.proto";
enum Kind { KIND_UNSPECIFIED = 0; CHECKING = 1; SAVINGS = 2; }
message Money { string currency = 1; int64 units = 2; }
message Account {
  string id = 1; string owner_name = 2; Kind kind = 3; Money balance = 4; repeated string tags = 5;
  int64 opened_at = 6;
}
message GetAccountRequest { string id = 1; bool verbose = 2; repeated string fields = 3; }
message CreateAccountRequest { Account account = 1; string request_id = 2; }
message ListRequest { string owner = 1; int32 limit = 2; }
message FailRequest { int32 code = 1; string message = 2; }
message Empty {}
service Accounts {
  rpc GetAccount(GetAccountRequest) returns (Account) { option (google.api.http) = { get: "/v1/accounts/{id}" }; }
  rpc CreateAccount(CreateAccountRequest) returns (Account) {
    option (google.api.http) = { post: "/v1/accounts" body: "account"
                                 additional_bindings { put: "/v1/accounts/{account.id}" body: "account" } };
  }
  rpc UpdateKind(Account) returns (Account) { option (google.api.http) = { patch: "/v1/accounts/{id}/kind" body: "*" }; }
  rpc ListAccounts(ListRequest) returns (stream Account) {
    option (google.api.http) = { get: "/v1/owners/{owner}/accounts" };
  }
  rpc Fail(FailRequest) returns (Empty) { option (google.api.http) = { post: "/v1/fail" body: "*" }; }
  rpc Upload(stream Account) returns (Empty) { option (google.api.http) = { post: "/v1/upload" body: "*" }; }
  rpc Ping(Empty) returns (Empty);
  rpc GetBalance(GetAccountRequest) returns (Account) {
    option (google.api.http) = { custom: { kind: "HEAD" path: "/v1/nothing" }
                                 additional_bindings { get: "/v1/accounts/{id}/balance" response_body: "balance" } };
  }
}
"""


def compile_descriptors(d: Path) -> Path:
    import grpc_tools
    (d / "google" / "api").mkdir(parents=True, exist_ok=True)
    (d / "google" / "api" / "http.proto").write_text(HTTP_PROTO)
    (d / "google" / "api" / "annotations.proto").write_text(ANNOTATIONS_PROTO)
    (d / "bank.proto").write_text(BANK_PROTO)
    out = d / "bank.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{d}", f"-I{include}",
                        f"--descriptor_set_out={out}", "--include_imports", "bank.proto"],
                       capture_output=True, text=True, cwd=d)
    assert r.returncode == 0, r.stderr
    return out


def _ld(num: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (lengths here stay under 128)."""
    return bytes((num << 3 | 2, len(data))) + data


def status_bin(code: int, message: str, details: list[tuple[str, bytes]]) -> bytes:
    """A google.rpc.Status (code 1, message 2, details 3: Any(type_url 1, value 2)), serialised by hand."""
    out = bytes((1 << 3, code)) + _ld(2, message.encode())
    for url, value in details:
        out += _ld(3, _ld(1, url.encode()) + _ld(2, value))
    return out


class Bank:
    """A grpcio server for bank.v1.Accounts, its messages made from the descriptor set (no generated code)."""

    def __init__(self, pb: Path) -> None:
        fds = descriptor_pb2.FileDescriptorSet.FromString(pb.read_bytes())
        pool = descriptor_pool.DescriptorPool()
        for f in fds.file:
            pool.Add(f)
        self.M = {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"bank.v1.{n}"))
                  for n in ("Account", "GetAccountRequest", "CreateAccountRequest", "ListRequest", "FailRequest",
                            "Empty", "Money")}
        self.seen: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self.remaining: list[float] = []
        M = self.M

        def rpc(name: str, req: str, resp: str, fn: Any, stream: bool = False) -> tuple[str, Any]:
            make = grpc.unary_stream_rpc_method_handler if stream else grpc.unary_unary_rpc_method_handler
            return name, make(fn, request_deserializer=M[req].FromString,
                              response_serializer=M[resp].SerializeToString)

        handlers = dict([
            rpc("GetAccount", "GetAccountRequest", "Account", self.get),
            rpc("CreateAccount", "CreateAccountRequest", "Account", self.create),
            rpc("UpdateKind", "Account", "Account", self.update),
            rpc("ListAccounts", "ListRequest", "Account", self.list, stream=True),
            rpc("Fail", "FailRequest", "Empty", self.fail),
            rpc("Ping", "Empty", "Empty", lambda req, ctx: M["Empty"]()),
            rpc("GetBalance", "GetAccountRequest", "Account", self.get),
        ])
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bank.v1.Accounts", handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def note(self, req: Any, ctx: Any) -> None:
        self.remaining.append(ctx.time_remaining())
        self.seen.append(req)
        self.metadata.append(dict(ctx.invocation_metadata()))

    def get(self, req: Any, ctx: Any) -> Any:
        self.note(req, ctx)
        if req.id == "missing":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no account missing")
        return self.M["Account"](id=req.id, owner_name="Ada", kind=2, tags=["a", "b"], opened_at=2**62,
                                 balance=self.M["Money"](currency="EUR", units=-(2**60)))

    def create(self, req: Any, ctx: Any) -> Any:
        self.note(req, ctx)
        return req.account

    def update(self, req: Any, ctx: Any) -> Any:
        self.note(req, ctx)
        return req

    def list(self, req: Any, ctx: Any) -> Any:
        self.note(req, ctx)
        for i in range(req.limit):
            yield self.M["Account"](id=f"{req.owner}-{i}", opened_at=i)
        if req.owner == "broken":
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "stream broke")

    def fail(self, req: Any, ctx: Any) -> Any:
        self.note(req, ctx)
        if req.message == "with details":
            ctx.set_trailing_metadata((("grpc-status-details-bin", status_bin(req.code, req.message, [
                ("type.googleapis.com/bank.v1.Money", self.M["Money"](currency="EUR", units=5).SerializeToString()),
                ("type.googleapis.com/other.Unknown", b"\x08\x01")])),))
        ctx.abort(grpc.StatusCode(next(c.value for c in grpc.StatusCode if c.value[0] == req.code)), req.message)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("transcode")
    pb = compile_descriptors(d)
    bank = Bank(pb)
    cfg = d / "fastgw.toml"
    cfg.write_text(f'''
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.bank]
targets = ["127.0.0.1:{bank.port}"]
protocol = "grpc"
timeout = "5s"
[[routes]]
name = "accounts"
path = "/v1/*"
upstream = "bank"
transcode = {{ descriptors = "{pb}", service = "bank.v1.Accounts" }}
[[routes]]
name = "direct"
path = "/bank.v1.Accounts/*"
upstream = "bank"
transcode = {{ descriptors = "{pb}", service = "bank.v1.Accounts" }}
''')
    gw = Gateway(cfg, workers=1)
    gw.wait_ready()
    yield gw, bank, cfg
    gw.close()
    bank.server.stop(0)


@pytest.fixture(params=["h1", "h2"])
def client(request: pytest.FixtureRequest, setup: Any) -> Any:
    gw = setup[0]
    with httpx.Client(base_url=gw.base, timeout=10, http1=request.param == "h1",
                      http2=request.param == "h2") as c:
        yield c


def test_unary_get_with_path_variable_and_query(client: httpx.Client, setup: Any) -> None:
    _, bank, _ = setup
    r = client.get("/v1/accounts/acc-1", params={"verbose": "true", "fields": ["a", "b"]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"id": "acc-1", "ownerName": "Ada", "kind": "SAVINGS", "tags": ["a", "b"],
                        "openedAt": str(2**62), "balance": {"currency": "EUR", "units": str(-(2**60))}}
    req = bank.seen[-1]
    assert req.id == "acc-1" and req.verbose is True and list(req.fields) == ["a", "b"]
    md = bank.metadata[-1]
    assert md["x-request-id"] == r.headers["x-request-id"]
    assert 3 < bank.remaining[-1] <= 5               # the upstream's timeout = "5s" as grpc-timeout


def test_post_with_field_body_and_additional_binding(client: httpx.Client, setup: Any) -> None:
    _, bank, _ = setup
    body = {"id": "n1", "owner_name": "Grace", "kind": "CHECKING", "balance": {"currency": "USD", "units": "12"},
            "openedAt": "9007199254740993"}                         # original and json names; int64 > 2^53
    r = client.post("/v1/accounts", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["openedAt"] == "9007199254740993" and r.json()["kind"] == "CHECKING"
    assert bank.seen[-1].account.opened_at == 9007199254740993
    r = client.put("/v1/accounts/n2", json={"ownerName": "Linus"})     # additional_bindings: PUT, id from the path
    assert r.status_code == 200 and r.json() == {"id": "n2", "ownerName": "Linus"}
    r = client.patch("/v1/accounts/n3/kind", json={"kind": 1})         # body "*", the enum as a number
    assert r.status_code == 200 and r.json() == {"id": "n3", "kind": "CHECKING"}


def test_response_body_field(client: httpx.Client) -> None:
    r = client.get("/v1/accounts/acc-9/balance")
    assert r.status_code == 200 and r.json() == {"currency": "EUR", "units": str(-(2**60))}


def test_method_without_a_rule(client: httpx.Client) -> None:
    r = client.post("/bank.v1.Accounts/Ping", json={})
    assert r.status_code == 200 and r.json() == {}


def test_strict_requests_never_reach_the_upstream(client: httpx.Client, setup: Any) -> None:
    _, bank, _ = setup
    n = len(bank.seen)
    cases = [
        (client.get("/v1/accounts/acc-1", params={"nope": "1"}), 400, "unknown query parameter"),
        (client.post("/v1/accounts", content=b"{not json"), 400, "malformed JSON"),
        (client.post("/v1/accounts", json={"unknownField": 1}), 400, "unknownField"),
        (client.patch("/v1/accounts/n3/kind", json={"id": "other"}), 400, "both in the path and in the body"),
        (client.post("/v1/accounts", json={"kind": "NO_SUCH_KIND"}), 400, "NO_SUCH_KIND"),
        (client.get("/v1/accounts/acc-1", params={"verbose": "yes"}), 400, "true or false"),
        (client.get("/v1/unbound"), 404, "no gRPC method"),
        (client.delete("/v1/accounts/acc-1"), 404, "no gRPC method"),
        (client.post("/v1/upload", json={}), 501, "client-streaming"),
    ]
    for r, status, text in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json" and text in r.json()["detail"], r.text
    assert len(bank.seen) == n


@pytest.mark.parametrize("code,status", [(1, 499), (2, 500), (3, 400), (4, 504), (5, 404), (6, 409), (7, 403),
                                         (8, 429), (9, 400), (10, 409), (11, 400), (12, 501), (13, 500),
                                         (14, 503), (15, 500), (16, 401)])
def test_grpc_status_mapping(setup: Any, code: int, status: int) -> None:
    gw = setup[0]
    r = httpx.post(gw.base + "/v1/fail", json={"code": code, "message": f"failed with {code}"}, timeout=10)
    assert r.status_code == status
    doc = r.json()
    assert r.headers["content-type"] == "application/problem+json" and r.headers["cache-control"] == "no-store"
    assert doc["status"] == status and doc["grpc_status"] == code and doc["detail"] == f"failed with {code}"
    assert doc["title"] == grpc.StatusCode(next(c.value for c in grpc.StatusCode if c.value[0] == code)).name


def test_server_streaming_as_ndjson(client: httpx.Client) -> None:
    with client.stream("GET", "/v1/owners/ada/accounts", params={"limit": "3"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines == [{"id": "ada-0"}, {"id": "ada-1", "openedAt": "1"}, {"id": "ada-2", "openedAt": "2"}]
    with client.stream("GET", "/v1/owners/broken/accounts", params={"limit": "2"}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[:2] == [{"id": "broken-0"}, {"id": "broken-1", "openedAt": "1"}]
    assert lines[2]["status"] == 503 and lines[2]["detail"] == "stream broke"     # the error, as the last line
    r = client.get("/v1/owners/nobody/accounts", params={"limit": "0"})
    assert r.status_code == 200 and r.content == b""


def test_status_details_in_the_problem(setup: Any) -> None:
    gw = setup[0]
    r = httpx.post(gw.base + "/v1/fail", json={"code": 9, "message": "with details"}, timeout=10)
    assert r.status_code == 400 and r.json()["title"] == "FAILED_PRECONDITION"
    assert r.json()["details"] == [{"@type": "type.googleapis.com/bank.v1.Money", "currency": "EUR", "units": "5"},
                                   {"@type": "type.googleapis.com/other.Unknown", "value": "CAE="}]


def test_server_streaming_as_server_sent_events(client: httpx.Client) -> None:
    with client.stream("GET", "/v1/owners/eve/accounts", params={"limit": "2"},
                       headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        text = r.read().decode()
    assert text == 'data: {"id":"eve-0"}\n\ndata: {"id":"eve-1","openedAt":"1"}\n\n'
    with client.stream("GET", "/v1/owners/broken/accounts", params={"limit": "1"},
                       headers={"Accept": "text/event-stream"}) as r:
        events = r.read().decode().split("\n\n")
    assert events[0] == 'data: {"id":"broken-0"}' and events[1].startswith("event: error\ndata: {")
    assert json.loads(events[1].split("data: ", 1)[1])["status"] == 503


def test_grpc_not_found_is_404(client: httpx.Client) -> None:
    r = client.get("/v1/accounts/missing")
    assert r.status_code == 404 and r.json()["detail"] == "no account missing" and r.json()["title"] == "NOT_FOUND"


def test_check_lists_the_transcoded_routes(setup: Any) -> None:
    cfg = setup[2]
    r = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "transcoded route accounts (bank.v1.Accounts):" in r.stdout
    assert "  GET /v1/accounts/{id} -> GetAccount" in r.stdout
    assert "  PUT /v1/accounts/{account.id} -> CreateAccount" in r.stdout
    assert "  GET /v1/owners/{owner}/accounts -> ListAccounts (server streaming)" in r.stdout
    assert "  POST /v1/upload -> Upload (client streaming: 501)" in r.stdout
    assert "  POST /bank.v1.Accounts/Ping -> Ping" in r.stdout


def test_config_checks(setup: Any, tmp_path: Path) -> None:
    from fastgw.config.root import ConfigError, loads
    pb = setup[2].parent / "bank.pb"
    base = f'''
[upstreams.h1]
targets = ["127.0.0.1:9"]
[[routes]]
name = "a"
path = "/a/*"
upstream = "h1"
transcode = {{ descriptors = "{pb}", service = "bank.v1.Nope" }}
'''
    with pytest.raises(ConfigError) as e:
        loads(base)
    text = "\n".join(e.value.errors)
    assert 'routes[0].transcode: the upstream must have protocol = "grpc"' in text
    assert 'no service "bank.v1.Nope"' in text
    # Two methods bound to the same verb and template: which one would a request call?
    d = tmp_path / "conflict"
    d.mkdir()
    compile_descriptors(d)
    (d / "bank.proto").write_text(BANK_PROTO.replace('{ get: "/v1/accounts/{id}" }', '{ get: "/v1/accounts/{id}/kind" }')
                                  .replace('patch: "/v1/accounts/{id}/kind" body: "*"', 'get: "/v1/accounts/{owner_name}/kind"'))
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{d}",
                        f"-I{Path(__import__('grpc_tools').__file__).parent / '_proto'}",
                        f"--descriptor_set_out={d / 'c.pb'}", "--include_imports", "bank.proto"],
                       capture_output=True, text=True, cwd=d)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ConfigError) as e:
        loads(base.replace(str(pb), str(d / "c.pb")).replace("bank.v1.Nope", "bank.v1.Accounts")
              .replace('targets = ["127.0.0.1:9"]', 'targets = ["127.0.0.1:9"]\nprotocol = "grpc"'))
    assert e.value.errors == ["routes[0].transcode: template conflict: GET /v1/accounts/{owner_name}/kind: "
                              "bank.v1.Accounts.GetAccount and bank.v1.Accounts.UpdateKind"]


def test_fast_json_paths_match_json_format(setup: Any) -> None:
    """codec.py builds messages from proto3 JSON and prints them without json_format when no well-known type
    is involved: the same bytes and the same JSON as json_format for what the tests' messages hold."""
    from google.protobuf import json_format

    from fastgw.policies.transcode import codec
    from fastgw.policies.transcode.descriptors import load
    svc = load(str(setup[2].parent / "bank.pb"), "bank.v1.Accounts")
    b = next(x for x in svc.bindings if x.method.name == "UpdateKind")
    docs = [{"id": "a", "ownerName": "x", "kind": "SAVINGS", "balance": {"currency": "EUR", "units": "-12"},
             "tags": ["p", "q"], "opened_at": 9007199254740993},
            {"kind": 2, "balance": {"units": 0}, "tags": []}, {"id": None}, {}]
    for doc in docs:
        ref = b.input()
        json_format.ParseDict(doc, ref)
        got = codec.request(b, ("a",) if "id" not in doc or doc["id"] is None else (doc["id"],), b"",
                            json.dumps({k: v for k, v in doc.items() if k != "id"}).encode())
        ref.id = ref.id or "a"
        assert b.input.FromString(got) == ref
        assert json.loads(codec.response(b, ref.SerializeToString())) == json_format.MessageToDict(ref)
