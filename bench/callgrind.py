#!/usr/bin/env python3
"""Instructions per request in the gateway's worker process, counted by callgrind: the data path's speed
yardstick. A change to the data path is judged by this figure (a refit must stay within +-2% per scenario).

Method. The gateway runs with 1 worker, and only the worker runs under `valgrind --tool=callgrind` (the
supervisor puts $FASTGW_WORKER_WRAPPER before the worker's command); a run's figure is the worker's whole
instruction count (Ir) from start to exit. Per scenario, three runs:
  1. N1 requests (warm-up only);  2. N2 requests;  3. N1 requests, then IDLE_SECONDS idle.
Ir = start-up and shutdown + requests x R + ticks x T, where a tick is the worker's periodic sweep (every
0.25 s of wall time: timeouts, the Date header, the access-log batch). Under callgrind a run's wall time,
so its tick count, depends on the machine's load; each run's ticks are counted exactly in its profile (calls
of Worker.sweep). Run 3 - run 1 gives T; then R = ((Ir2 - T t2) - (Ir1 - T t1)) / (N2 - N1): start-up,
warm-up, shutdown and time cancel out, and R is the same run to run within ~0.05%.
The client is deterministic: requests are sent one after another on keep-alive connections (HTTP/1.1: a
raw-socket client that reconnects when the gateway closes after max_requests_per_connection; h2c: `h2load -n N
-c1 -m1`, one connection, one stream after another). PYTHONHASHSEED is fixed.

    python3 bench/callgrind.py                          # every scenario, N1=200, N2=2200 (1-2 min each)
    python3 bench/callgrind.py --scenarios plain,h2c    # some of them
    python3 bench/callgrind.py --compare bench/results/callgrind-baseline-4c2dd11.json
    python3 bench/callgrind.py --compare OLD.json NEW.json   # two saved results, nothing is run

Writes bench/results/callgrind-<UTC timestamp>.md and .json (--name NAME: callgrind-NAME.*) and prints the
table (--json: the JSON document). --compare prints the change per scenario against an earlier JSON result,
flags |change| > 2% and then exits 1.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]
# fastgw (and so the h2 package) before the bench modules, which put bench/ first on sys.path, where
# bench/h2.py would hide h2.
from fastgw.process.supervisor import WORKER_WRAPPER_ENV  # noqa: E402

sys.path.append(_BENCH)
import auth_jwt  # noqa: E402  (bench/auth_jwt.py: RS256 key, token and gateway config)
import plots  # noqa: E402  (bench/plots.py: the PNG beside the result)
import ratelimit  # noqa: E402  (bench/ratelimit.py: the API key + local limit gateway config)
import run  # noqa: E402  (bench/run.py: processes, the nginx origin, the plain gateway config)
from progress import Progress  # noqa: E402

from bench import h2 as h2bench  # noqa: E402  (bench/h2.py: h2load with an exact request count)

THRESHOLD_PCT = 2.0        # a refit must stay within this per scenario
READY_TIMEOUT = 180.0      # the worker imports everything under callgrind (~50x slower) before it is ready
STOP_TIMEOUT = 120.0       # drain, then the worker's interpreter shutdown and callgrind's dump
IDLE_SECONDS = 5.0         # the third run idles this long after its requests: the cost of one tick
# The worker's periodic sweep (every 0.25 s: timeouts, the Date header, the access-log batch) runs per wall
# second, not per request, and a callgrind run's wall time varies with the machine's load. Each run counts
# its ticks as the calls of this function in the profile (one more at start-up, the same in every run).
# Cython's C name of the Python wrapper of Worker.sweep (fastgw/_core/worker.pyx; the module name is matched
# loosely, so that figures of older commits, where it was proxy.pyx, can still be measured); the number is
# the method's position in the class, so it changes when methods are added before it (the implementation,
# __pyx_pf_, is skipped)
TICK_FUNCTION = r"__pyx_pw_6fastgw_5_core_\d+[a-z0-9_]+?_6Worker_\d+sweep\b"


@dataclass
class Scenario:
    name: str
    what: str
    config: Callable[[dict, int, int], str]   # (shared state, gateway port, origin port) -> TOML
    headers: Callable[[dict], dict[str, str]]  # request headers
    expect: str = ""                           # a response header that proves the policy ran
    h2: bool = False


def plain_config(extra_server: str = "") -> Callable[[dict, int, int], str]:
    return lambda st, port, origin: run.FASTGW_TOML.format(
        port=port, origin_port=origin, extra_server=extra_server, admin_port=run.free_port(), extra_admin="")


def apikey_config(st: dict, port: int, origin: int) -> str:
    return ratelimit.TEMPLATE.format(port=port, origin_port=origin, extra_server="", admin_port=run.free_port(),
                                     extra_admin=ratelimit.PLAN_LOCAL)


def metering_config(st: dict, port: int, origin: int) -> str:
    """apikey_limit with [metering] (the memory sink: every request counted per consumer, route and status
    class in the worker's shared-memory tally; no Redis)."""
    return ratelimit.TEMPLATE.format(port=port, origin_port=origin, extra_server="", admin_port=run.free_port(),
                                     extra_admin=ratelimit.PLAN_LOCAL + '[metering]\nsink = "memory"\n')


def jwt_config(st: dict, port: int, origin: int) -> str:
    return auth_jwt.fastgw_config(port, origin, st["jwks"], ratelimit=True)


def h2_upstream_config(st: dict, port: int, origin: int) -> str:
    """The plain config, its upstream spoken to over HTTP/2 (h2c to the origin's h2c listener)."""
    return plain_config()(st, port, st["h2c_port"]).replace("keepalive = 128\n", 'protocol = "h2"\n')


# A CORS route (and a deprecated one) on top of `plain`: the cost of the policies' phases per request.
CORS_TABLE = '[cors.web]\norigins = ["https://app.bench.example", "https://*.partners.bench.example"]\n'
LIFECYCLE = ('lifecycle = { deprecated = "2026-01-01T00:00:00Z", sunset = "2099-01-01T00:00:00Z", '
             'link = "https://bench.example/migrate", successor = "/v2" }\n')


def cors_config(lifecycle: bool) -> Callable[[dict, int, int], str]:
    return lambda st, port, origin: run.FASTGW_TOML.format(
        port=port, origin_port=origin, extra_server="", admin_port=run.free_port(),
        extra_admin=CORS_TABLE) + 'cors = "web"\n' + (LIFECYCLE if lifecycle else "")


# Trace context (always on) with a client traceparent to continue, and span export to a collector (the
# nginx origin stands in: the worker encodes and POSTs each batch the same whatever the answer).
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def tracing_config(ratio: float) -> Callable[[dict, int, int], str]:
    return lambda st, port, origin: run.FASTGW_TOML.format(
        port=port, origin_port=origin, extra_server="", admin_port=run.free_port(),
        extra_admin=f'[tracing]\notlp_endpoint = "http://127.0.0.1:{origin}/v1/traces"\nsample_ratio = {ratio}\n')


def traceparent_header(st: dict) -> dict[str, str]:
    return {"traceparent": TRACEPARENT}


# A cached route: every request after the first is a hit answered from the worker's store (the route declares
# the freshness the nginx origin does not send, as bench/cache.py does for both proxies).
CACHE_TABLE = '[cache.bench]\n'
CACHED_ROUTE = 'cache = "bench"\n[routes.response_headers]\nadd = { "Cache-Control" = "max-age=86400" }\n'


def cache_config(st: dict, port: int, origin: int) -> str:
    return run.FASTGW_TOML.format(port=port, origin_port=origin, extra_server="", admin_port=run.free_port(),
                                  extra_admin=CACHE_TABLE) + CACHED_ROUTE


def origin_header(st: dict) -> dict[str, str]:
    return {"Origin": "https://app.bench.example"}


def no_headers(st: dict) -> dict[str, str]:
    return {}


SCENARIOS = {s.name: s for s in [
    Scenario("plain", "HTTP/1.1 proxying, one catch-all route, no policy; GET /3b (3-byte response)",
             plain_config(), no_headers),
    Scenario("apikey_limit", "API key + local rate limit (never exceeded) + request id + metrics",
             apikey_config, lambda st: {"X-API-Key": ratelimit.API_KEY}, expect="ratelimit"),
    Scenario("metering", "apikey_limit with [metering] (memory sink): each request counted for its consumer",
             metering_config, lambda st: {"X-API-Key": ratelimit.API_KEY}, expect="ratelimit"),
    Scenario("jwt_limit", "JWT RS256 (one token, verified once then cached) + rate limit + claims to headers",
             jwt_config, lambda st: {"Authorization": f"Bearer {st['token']}"}, expect="ratelimit"),
    Scenario("h2c", "h2c with prior knowledge: one connection, streams one after another (h2load -c1 -m1)",
             plain_config(), no_headers, h2=True),
    Scenario("access_log", "plain, with server.access_log = true",
             plain_config("access_log = true"), no_headers),
    Scenario("h1_to_h2", "plain, the upstream over HTTP/2 (protocol = \"h2\", h2c): an HTTP/1.1 client's GET /3b as "
             "one stream of a multiplexed connection", h2_upstream_config, no_headers),
    Scenario("traceparent", "plain, the client sending a traceparent (continued: parsed, its trace id kept)",
             plain_config(), traceparent_header),
    Scenario("tracing_1pct", "plain with [tracing]: 1% of requests sampled, their spans exported over OTLP/HTTP",
             tracing_config(0.01), no_headers),
    Scenario("tracing_100pct", "plain with [tracing]: every request's span exported over OTLP/HTTP",
             tracing_config(1.0), no_headers),
    Scenario("plain_origin", "plain with the cors scenario's Origin request header (no CORS route): what "
             "the header itself costs, for reading the cors figures", plain_config(), origin_header),
    Scenario("cors", "plain on a CORS route ([cors.NAME], a granted Origin: headers echoed, Vary)",
             cors_config(False), origin_header, expect="access-control-allow-origin"),
    Scenario("cors_lifecycle", "cors, and the route deprecated (Deprecation, Sunset, Link; the counter)",
             cors_config(True), origin_header, expect="deprecation"),
    Scenario("cache_hit", "plain on a cached route ([cache.NAME]): GET /3b answered from the worker's store "
             "(Age, Cache-Status)", cache_config, no_headers, expect="cache-status"),
]}


# ----------------------------------------------------------------------------------------------------------
# Clients: exact request counts, one request at a time, so the worker does the same work in every run.


def h1_client(port: int, path: str, headers: dict[str, str], n: int, expect: str) -> None:
    """n sequential GETs on keep-alive connections; a new connection only when the gateway closes one."""
    req = (f"GET {path} HTTP/1.1\r\nHost: bench\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
           + "\r\n").encode()
    sock: socket.socket | None = None
    buf = b""
    for i in range(n):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
        sock.sendall(req)
        while b"\r\n\r\n" not in buf:
            buf += _recv(sock)
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if lines[0].split()[1] != "200" or (expect and expect not in fields):
            raise RuntimeError(f"request {i}: unexpected response:\n{head.decode('latin-1')}")
        size = int(fields["content-length"])
        while len(buf) < size:
            buf += _recv(sock)
        buf = buf[size:]
        if fields.get("connection", "").lower() == "close":
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("the gateway closed the connection")
    return data


def h2_client(port: int, path: str, n: int) -> None:
    _, ok, _ = h2bench.h2load(port, path, n, 1, 1)
    if ok != n:
        raise RuntimeError(f"h2load: {n - ok} of {n} requests failed")


# ----------------------------------------------------------------------------------------------------------
# One gateway run: start it with the worker under callgrind, serve n requests, stop it, read the worker's Ir.


def callgrind_run(sc: Scenario, st: dict, origin_port: int, n: int, idle: float, tmp: str) -> tuple[int, int]:
    """(instructions, ticks) of the worker of one gateway run serving n requests, then idling `idle` s."""
    os.makedirs(tmp)
    port = run.free_port()
    cfg = os.path.join(tmp, "fastgw.toml")
    with open(cfg, "w") as f:
        f.write(sc.config(st, port, origin_port))
    env = dict(os.environ, PYTHONPATH=run.REPO_DIR, PYTHONHASHSEED="0")
    for k in ("PYTHONDEVMODE", "PYTHONASYNCIODEBUG", "PYTHONMALLOC"):
        env.pop(k, None)
    env[WORKER_WRAPPER_ENV] = (f"valgrind --tool=callgrind --callgrind-out-file={tmp}/callgrind.out.%p "
                               f"--log-file={tmp}/valgrind.%p.log")
    log = os.path.join(tmp, "fastgw.log")
    procs = run.Procs()
    gw = procs.spawn("fastgw", [sys.executable, "-m", "fastgw", "run", "-c", cfg, "--workers", "1"], log,
                     env=env, cwd=run.REPO_DIR)
    try:
        wait_logged(gw, log, '"event": "ready"')
        if sc.h2:
            h2_client(port, "/3b", n)
        else:
            h1_client(port, "/3b", sc.headers(st), n, sc.expect)
        time.sleep(idle)
        os.killpg(gw.pid, signal.SIGTERM)          # drain: the worker exits 0 and callgrind writes its file
        gw.wait(STOP_TIMEOUT)
    finally:
        procs.stop_all()
    outs = [f for f in os.listdir(tmp) if f.startswith("callgrind.out.")]
    if len(outs) != 1:
        raise RuntimeError(f"{sc.name}: expected one worker profile in {tmp}, found {outs} (did a worker restart?)"
                           f"\n{run.tail(log)}")
    with open(os.path.join(tmp, outs[0])) as f:
        profile = f.read()
    m = re.search(r"^(?:summary|totals):\s*(\d+)", profile, re.M)
    ticks = calls_of(profile, TICK_FUNCTION)
    if not m or not ticks:
        raise RuntimeError(f"{sc.name}: no instruction total or no call of {TICK_FUNCTION} in {outs[0]}")
    return int(m.group(1)), ticks


def calls_of(profile: str, name: str) -> int:
    """Calls of the functions whose name matches the regex `name`, from a callgrind profile (names are compressed:
    "cfn=(id) name" the first time, "cfn=(id)" after; the "calls=" line follows its "cfn=")."""
    names: dict[str, str] = {}
    total, counting = 0, False
    for m in re.finditer(r"^(c?fn|calls)=(?:\((\d+)\)(?: (.*))?|(\d+))", profile, re.M):
        kind, ident, text, count = m.groups()
        if kind == "calls":
            total += int(count) if counting else 0
            counting = False
            continue
        if text:
            names[ident] = text
        counting = kind == "cfn" and re.search(name, names.get(ident, "")) is not None
    return total


def wait_logged(proc: subprocess.Popen, log: str, needle: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{run.tail(log)}")
        with open(log, errors="replace") as f:
            if needle in f.read():
                return
        time.sleep(0.2)
    raise RuntimeError(f"gateway not ready after {READY_TIMEOUT:.0f} s:\n{run.tail(log)}")


# ----------------------------------------------------------------------------------------------------------
# Reports.


def git_describe() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", run.REPO_DIR, *a], capture_output=True, text=True).stdout.strip()
    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return rev + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def markdown(doc: dict) -> str:
    lines = [f"# Worker instructions per request (callgrind), {doc['timestamp']}", "",
             f"- commit: {doc['commit']}; CPU: {doc['cpu']}; {doc['python']}; {doc['valgrind']}",
             f"- `python3 bench/callgrind.py`: the worker's whole-process instruction counts (Ir) of three gateway "
             f"runs per scenario, N1 = {doc['n1']} requests, N2 = {doc['n2']}, N1 + {doc['idle_s']:g} s idle; figure "
             "= (Ir2 - Ir1 - ticks' cost) / (N2 - N1), ticks (the 0.25 s sweep) counted in each profile and "
             "costed by the idle run", "",
             "| scenario | instructions/request | what |", "|---|---|---|"]
    for name, r in doc["scenarios"].items():
        lines.append(f"| {name} | {r['per_request']:,.0f} | {SCENARIOS[name].what if name in SCENARIOS else ''} |")
    return "\n".join(lines) + "\n"


def compare(old: dict, new: dict) -> tuple[str, bool]:
    lines = [f"Change against {old.get('commit', '?')} ({old.get('timestamp', '?')}), "
             f"now {new.get('commit', '?')}; flagged: |change| > {THRESHOLD_PCT:g}%", "",
             "| scenario | before | after | change |", "|---|---|---|---|"]
    flagged = False
    for name, r in new["scenarios"].items():
        if name not in old["scenarios"]:
            lines.append(f"| {name} | - | {r['per_request']:,.0f} | new |")
            continue
        before = old["scenarios"][name]["per_request"]
        pct = (r["per_request"] - before) / before * 100
        flag = abs(pct) > THRESHOLD_PCT
        flagged |= flag
        lines.append(f"| {name} | {before:,.0f} | {r['per_request']:,.0f} | {pct:+.2f}%{' **FLAG**' if flag else ''} |")
    if old.get("cpu") != new.get("cpu"):
        lines += ["", f"WARNING: different CPUs ({old.get('cpu')} / {new.get('cpu')}): library code paths "
                  "chosen by CPU features differ, so the counts are not comparable."]
    return "\n".join(lines) + "\n", flagged


def measure(a: argparse.Namespace) -> dict:
    run.preflight()
    if missing := [t for t in ("valgrind", "h2load") if not shutil.which(t)]:
        sys.exit(f"missing tools: {', '.join(missing)} (apt-get install -y valgrind nghttp2-client)")
    tmp = tempfile.mkdtemp(prefix="fastgw-callgrind-")
    os.chmod(tmp, 0o755)           # nginx workers run as nobody when we are root: they must read www/
    procs = run.Procs()
    env = run.Env(tmp=tmp, procs=procs)
    st: dict = {}
    doc: dict = {"timestamp": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git_describe(),
                 "cpu": run.machine_info()["cpu"], "python": sys.version.split()[0],
                 "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
                 "n1": a.n1, "n2": a.n2, "idle_s": IDLE_SECONDS, "scenarios": {}}
    try:
        run.start_origin(env)
        st["h2c_port"] = env.origin_h2c_port
        if "jwt_limit" in a.scenarios:
            st["jwks"], st["token"] = auth_jwt.keys_and_token(tmp)   # one key and token for both runs
        plan = [(a.n1, 0.0), (a.n2, 0.0), (a.n1, IDLE_SECONDS)]
        progress = Progress("callgrind", len(a.scenarios) * len(plan), per_step=30)
        for name in a.scenarios:
            t0 = time.monotonic()
            runs = []
            for i, (n, idle) in enumerate(plan):
                progress.step(f"{name} run {i + 1}/{len(plan)}: {n} requests" + (f", {idle:g} s idle" if idle else ""))
                runs.append(callgrind_run(SCENARIOS[name], st, env.origin_port, n, idle,
                                          os.path.join(tmp, f"{name}-{i}")))
            (i1, t1), (i2, t2), (i3, t3) = runs
            if t3 - t1 < IDLE_SECONDS * 2:
                raise RuntimeError(f"{name}: the idle run ticked {t3 - t1} times more, expected ~{IDLE_SECONDS * 4:.0f}")
            tick = (i3 - i1) / (t3 - t1)          # run 3 = run 1 + idle ticks
            per = ((i2 - tick * t2) - (i1 - tick * t1)) / (a.n2 - a.n1)
            doc["scenarios"][name] = {
                "per_request": round(per, 1), "per_tick": round(tick),
                "uncorrected": round((i2 - i1) / (a.n2 - a.n1), 1), "seconds": round(time.monotonic() - t0),
                "runs": [{"requests": n, "idle_s": idle, "ir": ir, "ticks": t}
                         for (n, idle), (ir, t) in zip(plan, runs, strict=True)]}
            print(f"{name}: {per:,.1f} instructions/request ({tick:,.0f} per tick; (Ir, ticks) {runs}; "
                  f"{time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        progress.finish()
    finally:
        procs.stop_all()
    if not a.keep_tmp:
        subprocess.run(["rm", "-rf", tmp])
    else:
        print(f"kept {tmp}", file=sys.stderr)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=f"scenarios: {', '.join(SCENARIOS)}")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)")
    ap.add_argument("--n1", type=int, default=200, help="requests of the warm-up-only run (default 200)")
    ap.add_argument("--n2", type=int, default=2200, help="requests of the second run (default 2200)")
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    ap.add_argument("--compare", nargs="+", metavar="FILE",
                    help="earlier JSON result to compare with; with two files, compare them and run nothing")
    ap.add_argument("--name", help="save as callgrind-NAME.md/.json instead of the timestamp")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs, logs and callgrind profiles")
    a = ap.parse_args(argv)
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    if not 0 < a.n1 < a.n2:
        ap.error("need 0 < --n1 < --n2")
    if a.compare and len(a.compare) > 2:
        ap.error("--compare takes one or two files")
    old = None
    if a.compare:
        with open(a.compare[0]) as f:
            old = json.load(f)
    if a.compare and len(a.compare) == 2:
        with open(a.compare[1]) as f:
            doc = json.load(f)
    else:
        doc = measure(a)
        if not a.no_save:
            stamp = doc["timestamp"].replace("-", "").replace(":", "")
            base = os.path.join(run.RESULTS_DIR, f"callgrind-{a.name or stamp}")
            with open(base + ".md", "w") as f:
                f.write(markdown(doc))
            with open(base + ".json", "w") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
            print(f"wrote {base}.md and .json", file=sys.stderr)
            plots.after_run(base + ".md")
    print(json.dumps(doc, indent=1) if a.json else markdown(doc))
    if old is not None:
        text, flagged = compare(old, doc)
        print(text)
        return 1 if flagged else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
