#!/usr/bin/env python3
"""JWT scenario (docs/benchmarks.md "Method", issue 5): fastgw verifying an RS256 token (the same token on every request,
so the verified-token cache answers) against nginx as a plain reverse proxy, and the cold cost of one
verification per algorithm.

    python3 bench/auth_jwt.py                  # 5 rounds x 10 s, -c64 and -c1, plus the micro-benchmark
    python3 bench/auth_jwt.py --quick          # 2 rounds x 3 s
    python3 bench/auth_jwt.py --micro-only     # only the per-algorithm verification cost (no nginx, no wrk)

Set-up as bench/run.py (same origin, same nginx proxy, same cores); fastgw's catch-all route has
`auth = ["jwt:idp"]` (a jwks_file issuer, claims_to_headers sub -> X-User-ID) and wrk sends
`Authorization: Bearer <token>`. With `--ratelimit`, the route also gets a rate plan (needs the traffic
policy's [plans.*] keys). The ratio reported is fastgw-with-JWT / nginx-plain-proxy, as the issue asks.
Results: bench/results/<UTC>-jwt.md and latest-jwt.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import plots  # noqa: E402  (bench/plots.py: the PNG beside the result)
import run as B  # noqa: E402  (the proxy benchmark's harness: processes, wrk, CPU accounting)
from progress import Progress  # noqa: E402
from rounds import table as rounds_table  # noqa: E402  (bench/rounds.py: the per-round table)

RESULTS = Path(__file__).resolve().parent / "results"


def keys_and_token(tmp: str) -> tuple[str, str]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench-1", use="sig", alg="RS256")
    path = os.path.join(tmp, "jwks.json")
    Path(path).write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    tok = jwt.encode({"iss": "https://idp.bench", "aud": "api", "sub": "client-1", "iat": now, "exp": now + 3600},
                     key, algorithm="RS256", headers={"kid": "bench-1"})
    return path, tok


def fastgw_config(port: int, origin_port: int, jwks: str, ratelimit: bool) -> str:
    text = f"""[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[admin]
listen = "127.0.0.1:{B.free_port()}"

[upstreams.origin]
targets = ["127.0.0.1:{origin_port}"]
keepalive = 128

[[routes]]
name = "plain"
path = "/plain/*"
upstream = "origin"
strip_prefix = true

[[routes]]
name = "all"
path = "/*"
upstream = "origin"
auth = ["jwt:idp"]
{'plan = "bench"' if ratelimit else ''}

[auth.jwt.idp]
issuer = "https://idp.bench"
audiences = ["api"]
algorithms = ["RS256"]
jwks_file = "{jwks}"
claims_to_headers = {{ sub = "X-User-ID" }}
"""
    if ratelimit:
        text += '\n[plans.bench]\nlimits = [{ rate = "1000000/s", burst = 1000000 }]\n'
    return text


def micro(rounds: int = 200) -> list[tuple[str, float, float]]:
    """(algorithm, cold verification us (median), cached check us) through the real AuthPolicy."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from fastgw.config.root import loads
    from fastgw.policies.auth import policy as A

    class Ex:
        def __init__(self, tok: bytes) -> None:
            self.tok = b"Bearer " + tok
            self.identity = None
            self.peer = b"127.0.0.1"

        def header(self, name: bytes) -> bytes | None:
            return self.tok if name == b"authorization" else None

        def add_upstream_header(self, n: bytes, v: bytes) -> None:
            pass

        def add_upstream_lines(self, lines: bytes) -> None:
            pass

    out = []
    specs = [("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
             ("PS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
             ("ES256", ec.generate_private_key(ec.SECP256R1())),
             ("ES384", ec.generate_private_key(ec.SECP384R1())),
             ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
             ("HS256", None)]
    tmp = tempfile.mkdtemp(prefix="fastgw-jwt-micro-")
    progress = Progress("jwt micro", len(specs), heartbeat=0)
    for alg, key in specs:
        progress.step(f"{alg}: {rounds} cold verifications, then the cache")
        if key is None:
            src = 'secret = "0123456789abcdef0123456789abcdef"'
            signer: object = "0123456789abcdef0123456789abcdef"
        else:
            algo = jwt.algorithms.get_default_algorithms()[alg]
            jwk = json.loads(algo.to_jwk(key.public_key()))
            jwk.update(kid="k", alg=alg)
            p = os.path.join(tmp, f"{alg}.json")
            Path(p).write_text(json.dumps({"keys": [jwk]}))
            src = f'jwks_file = "{p}"'
            signer = key
        cfg = loads(f"""
[upstreams.u]
targets = ["127.0.0.1:9"]
[[routes]]
name = "r"
path = "/r"
upstream = "u"
auth = ["jwt:i"]
[auth.jwt.i]
issuer = "iss"
algorithms = ["{alg}"]
{src}
""")
        pol = A.build(cfg, cfg.routes[0], {})
        assert pol is not None
        iss = pol.methods[0][1]
        now = int(time.time())
        toks = [jwt.encode({"iss": "iss", "sub": f"s{i}", "exp": now + 600}, signer, algorithm=alg,  # type: ignore[arg-type]
                           headers={"kid": "k"}).encode() for i in range(rounds)]
        times = []
        for t in toks:
            t0 = time.perf_counter_ns()
            r = pol.check(Ex(t))
            times.append(time.perf_counter_ns() - t0)
            assert r is None, r
        ex = Ex(toks[0])
        n = 20000
        t0 = time.perf_counter_ns()
        for _ in range(n):
            pol.check(ex)
        warm = (time.perf_counter_ns() - t0) / n / 1000
        assert len(iss.cache) == rounds
        out.append((alg, statistics.median(times) / 1000, warm))
    progress.finish()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--micro-only", action="store_true")
    ap.add_argument("--ratelimit", action="store_true", help="add a rate plan to the route ([plans.*] keys)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", default="64,1")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.duration = 2, 3
    lines = ["# JWT: fastgw (RS256 token reused) vs nginx plain proxy", "",
             f"- machine: {json.dumps(B.machine_info())}", ""]
    micro_rows = micro()
    lines += ["## Verification cost per algorithm (one AuthPolicy.check, 200 distinct tokens; then one token "
              "reused)", "", "| alg | cold verify us (median) | cached check us |", "|---|---|---|"]
    lines += [f"| {alg} | {cold:.1f} | {warm:.2f} |" for alg, cold, warm in micro_rows]
    print("\n".join(lines[-len(micro_rows) - 2:]), flush=True)
    if not a.micro_only:
        lines += ["", *throughput(a)]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_save:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (RESULTS / f"{stamp}-jwt.md").write_text(text)
        (RESULTS / "latest-jwt.md").write_text(text)
        if not a.micro_only:
            plots.after_run(str(RESULTS / "latest-jwt.md"))
    return 0


def throughput(a: argparse.Namespace) -> list[str]:
    B.preflight()
    tmp = tempfile.mkdtemp(prefix="fastgw-bench-jwt-")
    os.chmod(tmp, 0o755)
    procs = B.Procs()
    env = B.Env(tmp=tmp, procs=procs)
    out = []
    try:
        B.start_origin(env)
        nginx_port, nginx = B.start_nginx_proxy(env)
        jwks, tok = keys_and_token(tmp)
        port = B.free_port()
        cfg = os.path.join(tmp, "fastgw.toml")
        Path(cfg).write_text(fastgw_config(port, env.origin_port, jwks, a.ratelimit))
        child_env = dict(os.environ, PYTHONPATH=B.REPO_DIR)
        child_env.pop("PYTHONDEVMODE", None)
        argv = B.gateway_argv(B.DEFAULT_GATEWAY_CMD, cfg)
        gw = procs.spawn("fastgw", argv, os.path.join(tmp, "fastgw.log"), env=child_env, cwd=B.REPO_DIR)
        deadline = time.monotonic() + 30
        import urllib.request
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/3b", headers={"Authorization": f"Bearer {tok}"})
                with urllib.request.urlopen(req, timeout=1) as r:
                    assert r.status == 200
                break
            except Exception:
                if time.monotonic() > deadline or gw.poll() is not None:
                    raise RuntimeError(B.tail(os.path.join(tmp, "fastgw.log"))) from None
                time.sleep(0.2)
        hdr = ["-H", f"Authorization: Bearer {tok}"]
        # The same fastgw process without auth (/plain/3b -> /3b) isolates what JWT costs.
        systems = {"nginx": (nginx_port, nginx.pid, [], "/3b"), "fastgw": (port, gw.pid, [], "/plain/3b"),
                   "fastgw+jwt": (port, gw.pid, hdr, "/3b")}
        out += ["## Throughput (3-byte responses; fastgw+jwt on /3b, plain fastgw on /plain/3b, same process)", "", f"- fastgw: `{' '.join(shlex.quote(x) for x in argv)}`",
                f"- wrk: `taskset -c {B.LOAD_CORE} wrk -t1 -cN -d{a.duration}s --latency` (+ `-H 'Authorization: "
                f"Bearer <RS256 token>'` for fastgw); {a.rounds} rounds interleaved, medians", "",
                "| conns | system | req/s | p50 ms | p99 ms | CPU s/100k | errors |", "|---|---|---|---|---|---|---|"]
        ratios = []
        every: list[dict] = []
        conn_counts = [int(c) for c in a.conns.split(",")]
        progress = Progress("jwt", len(conn_counts) * a.rounds * len(systems), per_step=a.duration + 2.5)
        for conns in conn_counts:
            res: dict[str, list] = {s: [] for s in systems}
            for rnd in range(a.rounds):
                for s in (list(systems) if rnd % 2 == 0 else list(reversed(systems))):
                    progress.step(f"/3b c{conns} round {rnd + 1}/{a.rounds} {s}", a.duration + 2)
                    p, pid, extra, path = systems[s]
                    base = ["taskset", "-c", B.LOAD_CORE, "wrk", "-t1", f"-c{conns}"]
                    B.run_wrk(base + ["-d2s", *extra, f"http://127.0.0.1:{p}{path}"], 40)
                    c0 = B.tree_cpu_seconds(pid)
                    o = B.run_wrk(base + [f"-d{a.duration}s", "--latency", *extra, f"http://127.0.0.1:{p}{path}"],
                                  a.duration + 60)
                    r = B.parse_wrk(o)
                    r.cpu_s = B.tree_cpu_seconds(pid) - c0
                    res[s].append(r)
                    every.append({"group": f"c{conns}", "system": s, "round": rnd, "rps": r.rps,
                                  "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "cpu_per_100k": r.cpu_per_100k,
                                  "errors": r.non2xx + r.socket_errors})
                    print(f"c{conns} r{rnd} {s}: {r.rps:,.0f} req/s cpu/100k {r.cpu_per_100k:.3f}s "
                          f"err {r.non2xx + r.socket_errors}", file=sys.stderr, flush=True)
            med = {}
            for s, rs in res.items():
                m = {k: statistics.median(getattr(r, k) for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
                m["cpu"] = statistics.median(r.cpu_per_100k for r in rs)
                m["err"] = sum(r.non2xx + r.socket_errors for r in rs)
                med[s] = m
                out.append(f"| {conns} | {s} | {m['rps']:,.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | "
                           f"{m['cpu']:.3f} | {m['err']} |")
            j, n, f = med["fastgw+jwt"], med["nginx"], med["fastgw"]
            ratios.append(f"| {conns} | {j['rps'] / n['rps']:.2f} | {j['cpu'] / n['cpu']:.2f} | "
                          f"{f['cpu'] / n['cpu']:.2f} | {j['cpu'] / f['cpu']:.2f} |")
        out += ["", "Ratios fastgw+jwt / nginx plain proxy (req/s higher is better; CPU lower is better):", "",
                "| conns | jwt/nginx req/s | jwt/nginx CPU/100k | plain fastgw/nginx CPU/100k | jwt/plain fastgw CPU |",
                "|---|---|---|---|---|", *ratios]
        progress.finish()
        out += ["", *rounds_table(every)]
        out += ["", "```toml", Path(cfg).read_text(), "```"]
    finally:
        procs.stop_all()
    return out


if __name__ == "__main__":
    sys.exit(main())
