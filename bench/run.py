"""Proxy benchmark: fastgw vs nginx as reverse proxies in front of the same nginx origin.

Method (docs/benchmarks.md): on a 2-core machine the proxy under test (1 worker) runs on core 0, the origin
(nginx, 1 worker, fixed bodies) and wrk on core 1. nginx-as-proxy and fastgw are measured in the same run with
rounds interleaved (round r: nginx then fastgw, round r+1: fastgw then nginx) so slow drift of the machine hits
both alike; medians over rounds are reported, with fastgw/nginx ratios.

Stdlib only.  Usage:  python3 bench/run.py [--quick] [--rounds N] [--duration S] [--only-nginx]
                                          [--gateway-cmd CMD] [--scenarios 3b,4k,64k,upload1m] [--conns 64,1]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import plots  # noqa: E402  (bench/plots.py: the PNG beside the result; matplotlib only when drawing)
from progress import Progress  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

# The proxies under test share core 0; the origin and the load generator share core 1.
PROXY_CORE = "0"
LOAD_CORE = "1"

# Scenario name -> (path, expected response body length, wrk lua script or None).
SCENARIOS = {
    "3b": ("/3b", 3, None),
    "4k": ("/4k", 4096, None),
    "64k": ("/64k", 65536, None),
    "upload1m": ("/upload", 3, "upload1m.lua"),
}
UPLOAD_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.body = string.rep("a", 1048576)
"""

DEFAULT_GATEWAY_CMD = "{python} -m fastgw run -c {config} --workers 1"

FASTGW_TOML = """# Written by bench/run.py: one worker, one catch-all route to the nginx origin.
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
{extra_server}
[admin]
listen = "127.0.0.1:{admin_port}"
{extra_admin}

[upstreams.origin]
targets = ["127.0.0.1:{origin_port}"]
keepalive = 128

[[routes]]
name = "all"
path = "/*"
upstream = "origin"
"""


# ----------------------------------------------------------------------------------------------------------
# Process management: every child runs in its own session (process group) so cleanup can kill the whole
# group, and Ctrl-C / SIGTERM on the harness never leaves a proxy holding the port.


class Procs:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []

    def spawn(
        self, name: str, argv: list[str], log_path: str, env: dict | None = None, cwd: str | None = None
    ) -> subprocess.Popen:
        log = open(log_path, "wb")
        try:
            p = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        finally:
            log.close()
        p.log_path = log_path  # type: ignore[attr-defined]  # for the error message if it dies
        self.children.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> None:
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def stop_all(self) -> None:
        for _name, p in reversed(self.children):
            self.stop(p)
        self.children.clear()


def _raise_interrupt(signum, frame):  # SIGTERM -> same cleanup path as Ctrl-C
    raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: str, n: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen, log_path: str, name: str, timeout: float = 20.0) -> None:
    """Wait until the port accepts and GET /3b answers 200 (the whole chain works, not just the listener)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n{tail(log_path)}")
        try:
            status, body = http_get(port, "/3b", timeout=1.0)
            if status == 200 and body == b"ok\n":
                return
            last = f"status {status} body {body[:80]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise RuntimeError(
        f"{name} not ready on port {port} after {timeout}s ({last}); log tail:\n{tail(log_path)}"
    )


def check_bodies(port: int, name: str, scenarios: list[str]) -> None:
    """Each scenario must return 200 with the exact body size through the proxy before it is timed."""
    for sc in scenarios:
        path, size, lua = SCENARIOS[sc]
        if lua:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request(
                    "POST", path, body=b"a" * 1048576, headers={"Content-Type": "application/octet-stream"}
                )
                r = conn.getresponse()
                status, body = r.status, r.read()
            finally:
                conn.close()
        else:
            status, body = http_get(port, path, timeout=5)
        if status != 200 or len(body) != size:
            raise RuntimeError(f"{name} {path}: status {status}, body {len(body)} bytes (want 200, {size})")


def render(template_name: str, out_path: str, **values: object) -> None:
    with open(os.path.join(BENCH_DIR, template_name)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    if "@" in re.sub(r"#.*", "", text):
        left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
        if left:
            raise RuntimeError(f"{template_name}: unfilled placeholders {left}")
    with open(out_path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------------------------------------
# The three servers.


@dataclass
class Env:
    tmp: str
    procs: Procs
    origin_port: int = 0
    origin_h2c_port: int = 0              # the origin's h2c listener (prior knowledge), for HTTP/2 upstreams
    origin: subprocess.Popen | None = None


def start_origin(env: Env) -> int:
    www = os.path.join(env.tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "4k"), "wb") as f:
        f.write(b"x" * 4095 + b"\n")
    with open(os.path.join(www, "64k"), "wb") as f:
        f.write(b"y" * 65535 + b"\n")
    open(os.path.join(www, "upload"), "wb").close()  # POST target, see the origin template
    port = free_port()
    env.origin_h2c_port = free_port()
    conf = os.path.join(env.tmp, "origin.conf")
    render("origin", conf, DIR=env.tmp, PORT=port, H2C_PORT=env.origin_h2c_port)
    log = os.path.join(env.tmp, "origin.log")
    argv = [
        "taskset",
        "-c",
        LOAD_CORE,
        "nginx",
        "-p",
        env.tmp,
        "-e",
        os.path.join(env.tmp, "origin-error.log"),
        "-c",
        conf,
    ]
    p = env.procs.spawn("origin", argv, log)
    p.log_path = os.path.join(env.tmp, "origin-error.log")  # type: ignore[attr-defined]
    wait_ready(port, p, os.path.join(env.tmp, "origin-error.log"), "origin")
    env.origin_port, env.origin = port, p
    return port


def start_nginx_proxy(env: Env, worker_connections: int = 4096) -> tuple[int, subprocess.Popen]:
    port = free_port()
    conf = os.path.join(env.tmp, "proxy.conf")
    render(
        "nginx_proxy",
        conf,
        DIR=env.tmp,
        PORT=port,
        ORIGIN_PORT=env.origin_port,
        WORKER_CONNECTIONS=worker_connections,
    )
    log = os.path.join(env.tmp, "proxy.log")
    argv = [
        "taskset",
        "-c",
        PROXY_CORE,
        "nginx",
        "-p",
        env.tmp,
        "-e",
        os.path.join(env.tmp, "proxy-error.log"),
        "-c",
        conf,
    ]
    p = env.procs.spawn("nginx-proxy", argv, log)
    p.log_path = os.path.join(env.tmp, "proxy-error.log")  # type: ignore[attr-defined]
    wait_ready(port, p, os.path.join(env.tmp, "proxy-error.log"), "nginx-proxy")
    return port, p


def gateway_argv(cmd_template: str, config: str) -> list[str]:
    cmd = cmd_template.format(python=shlex.quote(sys.executable), config=shlex.quote(config))
    return ["taskset", "-c", PROXY_CORE] + shlex.split(cmd)


def start_fastgw(
    env: Env, cmd_template: str = DEFAULT_GATEWAY_CMD, extra_server: str = "", timeout: float = 30.0,
    extra_admin: str = "",
) -> tuple[int, subprocess.Popen, list[str]]:
    port = free_port()
    config = os.path.join(env.tmp, "fastgw.toml")
    with open(config, "w") as f:
        f.write(FASTGW_TOML.format(port=port, origin_port=env.origin_port, extra_server=extra_server,
                                   admin_port=free_port(), extra_admin=extra_admin))
    log = os.path.join(env.tmp, "fastgw.log")
    argv = gateway_argv(cmd_template, config)
    child_env = dict(os.environ)
    # Run the working tree's fastgw without Python debug overhead (fastgw has no access log to turn off).
    child_env["PYTHONPATH"] = REPO_DIR + os.pathsep + child_env.get("PYTHONPATH", "")
    child_env.pop("PYTHONDEVMODE", None)
    child_env.pop("PYTHONASYNCIODEBUG", None)
    p = env.procs.spawn("fastgw", argv, log, env=child_env, cwd=REPO_DIR)
    wait_ready(port, p, log, "fastgw", timeout=timeout)
    return port, p, argv


# ----------------------------------------------------------------------------------------------------------
# Measurement helpers.

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of one process, from /proc/PID/stat (comm may contain spaces/parens)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] = state (field 3); ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]) + int(rest[12])


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                parents.setdefault(st[0], []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user+system) of the process and all its live descendants (workers, nginx master+worker)."""
    ticks = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st:
            ticks += st[1]
    return ticks / CLK_TCK


def core_ticks() -> dict[str, tuple[int, int]]:
    """Per core (busy, steal) ticks from /proc/stat; busy = user+nice+system+irq+softirq."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *v = line.split()
                v = [int(x) for x in v] + [0] * 8
                out[name[3:]] = (v[0] + v[1] + v[2] + v[5] + v[6], v[7])
    return out


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    cpu_s: float = 0.0
    raw: str = ""
    wall_s: float = 0.0
    proxy_core_other: float = 0.0  # share of the proxy core's time busy with anything but the proxy
    steal: float = 0.0  # share of the run's wall time (both cores) stolen by the hypervisor
    load_core_busy: float = 0.0  # origin + wrk core: near 100% means the load side may be the limit

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu_s / self.requests * 100000 if self.requests else float("nan")


def parse_wrk(out: str) -> WrkResult:
    def grab(pattern: str, default: str | None = None) -> str:
        m = re.search(pattern, out, re.M)
        if not m:
            if default is not None:
                return default
            raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
        return m.group(1)

    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        rps=float(grab(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=to_ms(grab(r"^\s+50%\s+(\S+)")),
        p99_ms=to_ms(grab(r"^\s+99%\s+(\S+)")),
        requests=int(grab(r"^\s+(\d+) requests in")),
        non2xx=int(grab(r"Non-2xx or 3xx responses:\s+(\d+)", "0")),
        socket_errors=sum(int(x) for x in sock.groups()) if sock else 0,
        raw=out,
    )


def wrk_argv(port: int, scenario: str, conns: int, duration: str, lua_path: str | None) -> list[str]:
    path = SCENARIOS[scenario][0]
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration}", "--latency"]
    if lua_path:
        argv += ["-s", lua_path]
    return argv + [f"http://127.0.0.1:{port}{path}"]


def run_wrk(argv: list[str], timeout: float) -> str:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    text = out.decode("utf-8", "replace")
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {' '.join(argv)}\n{text}")
    return text


# ----------------------------------------------------------------------------------------------------------
# Reporting.


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "loadavg at start": open("/proc/loadavg").read().strip(),
    }


def save_report(text: str, kind: str) -> None:
    """Save a bench script's markdown result as <timestamp>-<kind>.md and latest-<kind>.md in
    bench/results, and draw its plot."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name in (f"{stamp}-{kind}.md", f"latest-{kind}.md"):
        with open(os.path.join(RESULTS_DIR, name), "w") as f:
            f.write(text)
    plots.after_run(os.path.join(RESULTS_DIR, f"latest-{kind}.md"))


def fmt(x: float, digits: int = 2) -> str:
    if x != x:  # NaN
        return "n/a"
    return f"{x:,.{digits}f}"


def render_report(meta: dict, rows: list[dict], per_round: list[dict], systems: list[str]) -> str:
    lines = [f"# Proxy benchmark — {meta['timestamp']}", ""]
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in meta["machine"].items()]
    lines += ["", "## Method", ""]
    lines += [
        f"- proxies (1 worker each) pinned to core {PROXY_CORE}; origin nginx + wrk pinned to core {LOAD_CORE}",
        f"- {meta['rounds']} rounds per cell, {meta['duration']} each after a {meta['warmup']} warmup; "
        "order alternates per round (nginx first on even rounds, fastgw first on odd)",
        "- figures are medians over rounds; ratio = fastgw / nginx (req/s: higher is better for fastgw "
        "when > 1; p50, p99, CPU: lower is better for fastgw when < 1)",
        "- CPU/100k = (utime+stime of the proxy's process tree over the timed run) / requests * 100000, "
        "in CPU seconds",
        "",
        "## Commands",
        "",
    ]
    lines += [f"- {name}: `{cmd}`" for name, cmd in meta["commands"].items()]
    lines += ["", "## Results (medians)", ""]
    hdr = "| scenario | conns | system | req/s | p50 ms | p99 ms | CPU s/100k | errors |"
    lines += [hdr, "|" + "---|" * 8]
    for r in rows:
        for s in systems:
            m = r[s]
            lines.append(
                f"| {r['scenario']} | {r['conns']} | {s} | {fmt(m['rps'], 0)} | {fmt(m['p50_ms'], 3)} "
                f"| {fmt(m['p99_ms'], 3)} | {fmt(m['cpu_per_100k'], 3)} | {m['errors']} |"
            )
    if len(systems) == 2:
        lines += ["", "## Ratios fastgw / nginx", ""]
        lines += ["| scenario | conns | req/s | p50 | p99 | CPU/100k |", "|" + "---|" * 6]
        for r in rows:
            q = r["ratio"]
            lines.append(
                f"| {r['scenario']} | {r['conns']} | {fmt(q['rps'])} | {fmt(q['p50_ms'])} "
                f"| {fmt(q['p99_ms'])} | {fmt(q['cpu_per_100k'])} |"
            )
    lines += [
        "",
        "## Every run",
        "",
        "(proxy CPU = the proxy's CPU time / wall time: 100% means the proxy was the bottleneck; "
        f"other = share of core {PROXY_CORE} busy with anything but the proxy during the run: "
        f"interference or softirq; load core = core {LOAD_CORE} (origin + wrk) busy: near 100% means the "
        "load side, not the proxy, may limit req/s; steal = hypervisor steal over both cores)",
        "",
        "| scenario | conns | round | system | req/s | p50 ms | p99 ms | CPU s/100k | requests | errors "
        "| proxy CPU | other | load core | steal |",
        "|" + "---|" * 14,
    ]
    for x in per_round:
        lines.append(
            f"| {x['scenario']} | {x['conns']} | {x['round']} | {x['system']} | {fmt(x['rps'], 0)} "
            f"| {fmt(x['p50_ms'], 3)} | {fmt(x['p99_ms'], 3)} | {fmt(x['cpu_per_100k'], 3)} "
            f"| {x['requests']} | {x['errors']} | {x['util']:.0%} | {x['other']:.0%} | {x['load']:.0%} "
            f"| {x['steal']:.0%} |"
        )
    if meta.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3s (harness check, not for numbers)")
    ap.add_argument("--rounds", type=int, help="rounds per cell (default 5, --quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per timed run (default 10, --quick 3)")
    ap.add_argument(
        "--warmup", type=float, help="seconds of warmup before each timed run (default 2, quick 1)"
    )
    ap.add_argument("--scenarios", default="3b,4k,64k", help=f"comma list of {','.join(SCENARIOS)}")
    ap.add_argument("--conns", default="64,1", help="comma list of wrk connection counts (wrk -t1 always)")
    ap.add_argument("--only-nginx", action="store_true", help="benchmark nginx-proxy only (harness test)")
    ap.add_argument(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        help="gateway command; {python} and {config} are substituted; taskset -c 0 is prepended "
        f"(default: {DEFAULT_GATEWAY_CMD!r})",
    )
    ap.add_argument("--no-save", action="store_true", help="print only, write nothing under bench/results")
    ap.add_argument("--results-dir", default=RESULTS_DIR, help="where the results and plots go (default bench/results)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    a = ap.parse_args(argv)
    a.rounds = a.rounds or (2 if a.quick else 5)
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 2.0)
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    a.conns = [int(c) for c in a.conns.split(",")]
    return a


def preflight() -> None:
    missing = [t for t in ("nginx", "wrk", "taskset") if not shutil.which(t)]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (apt-get install -y nginx-light wrk util-linux)")
    global LOAD_CORE
    if (os.cpu_count() or 1) < 2:
        LOAD_CORE = PROXY_CORE
        print(
            "WARNING: 1 CPU: everything shares core 0; figures are not comparable to the 2-core method",
            file=sys.stderr,
        )


def dur(s: float) -> str:
    """wrk takes whole seconds only ("500ms" is rejected): round, at least 1s."""
    return f"{max(1, round(s))}s"



def result_files(stamp: str, only_nginx: bool, quick: bool) -> tuple[list[str], str]:
    """(report files, data file) a run writes in bench/results. A --quick run (2 short rounds: a harness
    check, too noisy to compare) writes quick-* files only, so the committed latest-* figures stay."""
    suffix = "-proxy-nginx-only" if only_nginx else "-proxy"
    if quick:
        return [f"quick{suffix}.md"], f"quick{suffix}.json"
    return [f"{stamp}{suffix}.md", f"latest{suffix}.md"], f"latest{suffix}.json"

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # even if started with SIGINT ignored (bg job)
    tmp = tempfile.mkdtemp(prefix="fastgw-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as nobody when we are root: they must read www/
    procs = Procs()
    env = Env(tmp=tmp, procs=procs)
    notes: list[str] = []
    try:
        start_origin(env)
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        commands: dict[str, str] = {}
        ports["nginx"], p = start_nginx_proxy(env)
        pids["nginx"] = p.pid
        commands["origin"] = f"taskset -c {LOAD_CORE} nginx -c origin.conf (bench/origin template)"
        commands["nginx"] = f"taskset -c {PROXY_CORE} nginx -c proxy.conf (bench/nginx_proxy template)"
        systems = ["nginx"]
        if not args.only_nginx:
            ports["fastgw"], p, gargv = start_fastgw(env, args.gateway_cmd)
            pids["fastgw"] = p.pid
            commands["fastgw"] = " ".join(shlex.quote(x) for x in gargv) + "  (config: see below)"
            systems.append("fastgw")
        for s in systems:
            check_bodies(ports[s], s, args.scenarios)

        lua_paths = {}
        for sc in args.scenarios:
            lua = SCENARIOS[sc][2]
            if lua:
                lua_paths[sc] = os.path.join(tmp, lua)
                with open(lua_paths[sc], "w") as f:
                    f.write(UPLOAD_LUA)
        commands["wrk"] = (
            " ".join(wrk_argv(0, "3b", 64, dur(args.duration), None)).replace(":0/", ":PORT/")
            + f"  (also -c1; paths {', '.join(SCENARIOS[s][0] for s in args.scenarios)})"
        )

        per_round: list[dict] = []
        rows: list[dict] = []
        total = len(args.scenarios) * len(args.conns) * args.rounds * len(systems)
        done = 0
        t0 = time.monotonic()
        progress = Progress("proxy", total, per_step=args.warmup + args.duration + 1)
        for sc in args.scenarios:
            for conns in args.conns:
                results: dict[str, list[WrkResult]] = {s: [] for s in systems}
                for rnd in range(args.rounds):
                    order = systems if rnd % 2 == 0 else list(reversed(systems))
                    for s in order:
                        progress.step(f"{sc} c{conns} round {rnd + 1}/{args.rounds} {s}",
                                      args.warmup + args.duration)
                        lua = lua_paths.get(sc)
                        if args.warmup > 0:
                            run_wrk(wrk_argv(ports[s], sc, conns, dur(args.warmup), lua), args.warmup + 30)
                        for name, pp in procs.children:  # a crashed proxy must not be timed as "slow"
                            if pp.poll() is not None:
                                raise RuntimeError(
                                    f"{name} died (rc {pp.returncode}); log tail:\n{tail(pp.log_path)}"
                                )
                        cpu0, cores0, w0 = tree_cpu_seconds(pids[s]), core_ticks(), time.monotonic()
                        out = run_wrk(
                            wrk_argv(ports[s], sc, conns, dur(args.duration), lua), args.duration + 60
                        )
                        cpu1, cores1, w1 = tree_cpu_seconds(pids[s]), core_ticks(), time.monotonic()
                        res = parse_wrk(out)
                        res.cpu_s, res.wall_s = cpu1 - cpu0, w1 - w0
                        busy0 = (cores1[PROXY_CORE][0] - cores0[PROXY_CORE][0]) / CLK_TCK
                        res.proxy_core_other = max(0.0, busy0 - res.cpu_s) / res.wall_s
                        res.load_core_busy = (
                            (cores1[LOAD_CORE][0] - cores0[LOAD_CORE][0]) / CLK_TCK / res.wall_s
                        )
                        res.steal = (
                            sum(cores1[c][1] - cores0[c][1] for c in cores1)
                            / CLK_TCK
                            / res.wall_s
                            / len(cores1)
                        )
                        if res.proxy_core_other > 0.10:
                            notes.append(
                                f"{s} {sc} c{conns} round {rnd}: core {PROXY_CORE} was "
                                f"{res.proxy_core_other:.0%} busy with other work (noisy run)"
                            )
                        results[s].append(res)
                        errors = res.non2xx + res.socket_errors
                        per_round.append(
                            dict(
                                scenario=sc,
                                conns=conns,
                                round=rnd,
                                system=s,
                                rps=res.rps,
                                p50_ms=res.p50_ms,
                                p99_ms=res.p99_ms,
                                cpu_per_100k=res.cpu_per_100k,
                                requests=res.requests,
                                errors=_err_text(res),
                                cpu_s=res.cpu_s,
                                other=res.proxy_core_other,
                                steal=res.steal,
                                util=res.cpu_s / res.wall_s,
                                load=res.load_core_busy,
                            )
                        )
                        if errors:
                            notes.append(f"{s} {sc} c{conns} round {rnd}: {_err_text(res)}\n\n```\n{out}```")
                        done += 1
                        print(
                            f"[{done}/{total} {time.monotonic() - t0:5.0f}s] {sc:>8} c{conns:<3} r{rnd} "
                            f"{s:<6} {res.rps:>10,.0f} req/s  p50 {res.p50_ms:7.3f}ms  "
                            f"p99 {res.p99_ms:7.3f}ms  cpu/100k {res.cpu_per_100k:6.3f}s  "
                            f"util {res.cpu_s / res.wall_s:4.0%} other {res.proxy_core_other:4.0%} "
                            f"load {res.load_core_busy:4.0%} steal {res.steal:4.0%}  "
                            f"err {_err_text(res)}",
                            file=sys.stderr,
                            flush=True,
                        )
                row: dict = {"scenario": sc, "conns": conns}
                for s in systems:
                    rs = results[s]
                    row[s] = {
                        "rps": statistics.median(r.rps for r in rs),
                        "p50_ms": statistics.median(r.p50_ms for r in rs),
                        "p99_ms": statistics.median(r.p99_ms for r in rs),
                        "cpu_per_100k": statistics.median(r.cpu_per_100k for r in rs),
                        "errors": sum(r.non2xx + r.socket_errors for r in rs),
                    }
                if len(systems) == 2:
                    a, b = row["fastgw"], row["nginx"]
                    row["ratio"] = {
                        k: (a[k] / b[k] if b[k] else float("nan"))
                        for k in ("rps", "p50_ms", "p99_ms", "cpu_per_100k")
                    }
                rows.append(row)
        progress.finish()

        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        meta = {
            "timestamp": stamp,
            "machine": machine_info(),
            "rounds": args.rounds,
            "duration": dur(args.duration),
            "warmup": dur(args.warmup),
            "commands": commands,
            "notes": notes,
        }
        report = render_report(meta, rows, per_round, systems)
        report += "\n## Configs\n"
        for title, fname in (
            ("origin (nginx)", "origin.conf"),
            ("nginx proxy", "proxy.conf"),
            ("fastgw", "fastgw.toml"),
        ):
            path = os.path.join(tmp, fname)
            if os.path.exists(path):
                report += f"\n### {title}\n\n```\n{open(path).read().rstrip()}\n```\n"
        print(report)
        if not args.no_save:
            os.makedirs(args.results_dir, exist_ok=True)
            reports, data = result_files(stamp, args.only_nginx, args.quick)
            for name in reports:
                with open(os.path.join(args.results_dir, name), "w") as f:
                    f.write(report)
            with open(os.path.join(args.results_dir, data), "w") as f:
                json.dump({"meta": meta, "medians": rows, "runs": per_round}, f, indent=1)
            print(f"written: {', '.join(os.path.join(args.results_dir, n) for n in (*reports, data))}", file=sys.stderr)
            plots.after_run(os.path.join(args.results_dir, reports[-1]))
        return 0
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"bench failed: {e}", file=sys.stderr)
        if args.keep_tmp:
            print(f"logs kept in {tmp}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _err_text(r: WrkResult) -> str:
    if not (r.non2xx or r.socket_errors):
        return "0"
    m = re.search(r"Socket errors: (.*)", r.raw)
    parts = []
    if r.non2xx:
        parts.append(f"non-2xx {r.non2xx}")
    if m:
        parts.append(f"socket {m.group(1)}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
