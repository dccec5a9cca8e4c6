"""Idle keep-alive memory: what 10,000 idle client connections cost the gateway process, in bytes each.

Starts the nginx origin and fastgw (1 worker, pinned like bench/run.py; nginx-as-proxy is measured too, as a
reference), opens N client connections, sends one GET /3b on each and reads the response (so each is a real
kept-alive HTTP/1.1 connection, parked between requests), then holds them all idle and measures the proxy's
memory: VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup), summed over its process tree.

    bytes per idle connection = (memory with N idle connections - baseline) / N

Kernel socket buffers are NOT in RSS: they are kernel memory, shown separately from /proc/net/sockstat
(that figure covers both ends of every loopback connection, client and proxy side).

Stdlib only.  Usage:  python3 bench/memory_idle.py [-n 10000] [--only-nginx] [--no-nginx] [--gateway-cmd CMD]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plots  # noqa: E402  (bench/plots.py: the PNG beside the result)
import run as harness  # noqa: E402  (bench/run.py: process management, origin/proxy/gateway startup)
from progress import Progress  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
REQUEST = b"GET /3b HTTP/1.1\r\nHost: bench\r\nUser-Agent: memory_idle\r\n\r\n"
# The gateway must not close the connections while they are being counted (default idle_timeout is 60s).
FASTGW_EXTRA = '[server.limits]\nidle_timeout = "10m"\n'


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE (children inherit it, so the proxies get it too); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need)
    if hard != resource.RLIM_INFINITY and want > hard:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def tree_memory(root: int) -> tuple[int, int]:
    """(VmRSS, Pss) in bytes summed over the process tree."""
    rss = pss = 0
    for pid in harness.process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def tree_fds(root: int) -> int:
    n = 0
    for pid in harness.process_tree(root):
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def tcp_mem_bytes() -> int:
    """Kernel memory held by TCP sockets system-wide (/proc/net/sockstat 'TCP: ... mem N' is in pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * PAGE
    return 0


def slab_bytes() -> int:
    """Kernel slab memory system wide (/proc/meminfo Slab): where socket, inode and file structs live."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1]) * 1024
    return 0


def one_request(s: socket.socket) -> None:
    """Send GET /3b and read exactly one response (headers + Content-Length body); keep the socket open."""
    s.sendall(REQUEST)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected status line {lines[0]!r}")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() == b"connection" and b"close" in value.lower():
            raise ConnectionError("proxy answered Connection: close")
    while len(body) < length:
        chunk = s.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk


def open_idle(port: int, n: int, progress: Progress | None = None) -> list[socket.socket]:
    socks = []
    for i in range(n):
        if progress is not None and i and i % 2000 == 0:
            progress.note(f"{i:,} of {n:,} connections open")
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            one_request(s)
        except (OSError, ConnectionError) as e:
            s.close()
            for x in socks:
                x.close()
            raise RuntimeError(f"connection #{i}: {e}") from None
        socks.append(s)
    return socks


def count_closed(socks: list[socket.socket]) -> int:
    """An idle kept-alive socket has nothing to read; readable/hup means the proxy closed it."""
    p = select.poll()
    for s in socks:
        p.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    return len(p.poll(0))


def settle() -> None:
    gc.collect()
    time.sleep(1.0)


def measure(name: str, pid: int, port: int, n: int, progress: Progress | None = None) -> dict:
    # Baseline after some traffic, so lazily built state (imports, first buffers, the upstream pool) is
    # already there and is not charged to the idle connections.
    for s in open_idle(port, 50):
        s.close()
    settle()
    rss0, pss0 = tree_memory(pid)
    fds0, tcp0, slab0 = tree_fds(pid), tcp_mem_bytes(), slab_bytes()
    t0 = time.monotonic()
    socks = open_idle(port, n, progress)
    open_s = time.monotonic() - t0
    try:
        settle()
        rss1, pss1 = tree_memory(pid)
        fds1, tcp1, slab1 = tree_fds(pid), tcp_mem_bytes(), slab_bytes()
        closed = count_closed(socks)
    finally:
        for s in socks:
            s.close()
    settle()
    rss2, pss2 = tree_memory(pid)
    r = dict(
        name=name,
        n=n,
        open_s=open_s,
        rss0=rss0,
        pss0=pss0,
        rss1=rss1,
        pss1=pss1,
        rss2=rss2,
        pss2=pss2,
        fds0=fds0,
        fds1=fds1,
        tcp0=tcp0,
        tcp1=tcp1,
        closed=closed,
    )
    r["slab_per_conn"] = (slab1 - slab0) / n
    r["rss_per_conn"] = (rss1 - rss0) / n
    r["pss_per_conn"] = (pss1 - pss0) / n
    r["tcp_per_conn"] = (tcp1 - tcp0) / n
    print(
        f"{name}: {n} idle conns opened in {open_s:.1f}s; RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB "
        f"({r['rss_per_conn']:.0f} B/conn), Pss {r['pss_per_conn']:.0f} B/conn; after closing all: "
        f"RSS {rss2 / 2**20:.1f} MiB; fds {fds0} -> {fds1}; closed by proxy while idle: {closed}",
        file=sys.stderr,
        flush=True,
    )
    return r


def report(results: list[dict], meta: dict) -> str:
    mib = 2**20
    lines = [f"# Idle keep-alive memory — {meta['timestamp']}", ""]
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in meta["machine"].items()]
    lines += [
        "",
        "## Method",
        "",
        f"- {results[0]['n'] if results else 0} client connections, each sent one `GET /3b` (3-byte "
        "response read in full) and then held idle; proxy = 1 worker pinned to core "
        f"{harness.PROXY_CORE}, origin nginx on core {harness.LOAD_CORE}",
        "- baseline taken after 50 warm-up connections were opened, used and closed; all figures are "
        "summed over the proxy's process tree (nginx: master + worker)",
        "- per idle connection = (with N idle - baseline) / N; RSS from /proc/PID/status VmRSS, "
        "Pss from /proc/PID/smaps_rollup",
        "- **kernel memory is not in RSS/Pss**: socket buffers and socket/file structs live in the "
        "kernel. Shown apart, system wide and so covering BOTH ends of each loopback connection (the "
        "client's socket too): 'kernel TCP buf' = change in /proc/net/sockstat TCP mem (queued data; "
        "~0 for idle sockets), 'kernel slab' = change in /proc/meminfo Slab (socket, file, epoll structs)",
        "",
        "## Commands",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in meta["commands"].items()]
    lines += [
        "",
        "## Results",
        "",
        "| proxy | idle conns | RSS base MiB | RSS idle MiB | RSS B/conn | Pss B/conn "
        "| RSS after close MiB | fds base -> idle | closed while idle | kernel TCP buf B/conn "
        "| kernel slab B/conn (both ends) |",
        "|" + "---|" * 11,
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['rss0'] / mib:.1f} | {r['rss1'] / mib:.1f} "
            f"| {r['rss_per_conn']:,.0f} | {r['pss_per_conn']:,.0f} "
            f"| {r['rss2'] / mib:.1f} | {r['fds0']} -> {r['fds1']} | {r['closed']} "
            f"| {r['tcp_per_conn']:,.0f} | {r['slab_per_conn']:,.0f} |"
        )
    by = {r["name"]: r for r in results}
    if "fastgw" in by and "nginx" in by and by["nginx"]["rss_per_conn"] > 0:
        lines += [
            "",
            f"fastgw / nginx RSS per idle connection: "
            f"{by['fastgw']['rss_per_conn'] / by['nginx']['rss_per_conn']:.2f}",
        ]
    lines += [
        "",
        "Kernel socket buffers (and socket structs) are not included in RSS or Pss; see the kernel "
        "columns, which are system wide and include the client end of every connection.",
    ]
    if meta.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--conns", type=int, default=10000, help="idle connections (default 10000)")
    ap.add_argument("--only-nginx", action="store_true", help="measure nginx-proxy only (harness test)")
    ap.add_argument("--no-nginx", action="store_true", help="skip the nginx-proxy reference")
    ap.add_argument("--gateway-cmd", default=harness.DEFAULT_GATEWAY_CMD)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(argv)
    harness.preflight()
    # Twice the connections: fastgw's automatic connection cap (server.limits.max_connections = "auto",
    # fastgw/process/admission.py) keeps a descriptor free for each client's upstream connection, so
    # with RLIMIT_NOFILE = conns + 1000 it refused the last few dozen of 10,000 (connection #9968).
    limit = raise_nofile(2 * args.conns + 1000)
    notes = []
    if limit < 2 * args.conns + 1000:
        notes.append(
            f"RLIMIT_NOFILE is {limit}: measuring {(limit - 1000) // 2} connections instead of {args.conns}"
        )
        args.conns = (limit - 1000) // 2
    signal.signal(signal.SIGTERM, harness._raise_interrupt)
    signal.signal(signal.SIGHUP, harness._raise_interrupt)
    signal.signal(signal.SIGINT, harness._raise_interrupt)  # even if started with SIGINT ignored (bg job)
    tmp = tempfile.mkdtemp(prefix="fastgw-mem-")
    os.chmod(tmp, 0o755)
    procs = harness.Procs()
    env = harness.Env(tmp=tmp, procs=procs)
    results, commands = [], {}
    progress = Progress("memory", (0 if args.only_nginx else 1) + (0 if args.no_nginx else 1), heartbeat=0)
    try:
        harness.start_origin(env)
        commands["origin"] = f"taskset -c {harness.LOAD_CORE} nginx -c origin.conf (bench/origin template)"
        if not args.only_nginx:
            port, p, argv_ = harness.start_fastgw(env, args.gateway_cmd, extra_server=FASTGW_EXTRA)
            commands["fastgw"] = " ".join(argv_) + "  (server.limits.idle_timeout = 10m)"
            progress.step(f"fastgw: {args.conns:,} idle connections")
            results.append(measure("fastgw", p.pid, port, args.conns, progress))
            procs.stop(p)
        if not args.no_nginx:
            port, p = harness.start_nginx_proxy(env, worker_connections=args.conns + 1000)
            commands["nginx"] = (
                f"taskset -c {harness.PROXY_CORE} nginx -c proxy.conf (bench/nginx_proxy template)"
            )
            progress.step(f"nginx: {args.conns:,} idle connections")
            results.append(measure("nginx", p.pid, port, args.conns, progress))
            procs.stop(p)
        progress.finish()
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        meta = {"timestamp": stamp, "machine": harness.machine_info(), "commands": commands, "notes": notes}
        text = report(results, meta)
        print(text)
        if not args.no_save:
            os.makedirs(harness.RESULTS_DIR, exist_ok=True)
            suffix = "-memory-nginx-only" if args.only_nginx else "-memory"
            for name in (f"{stamp}{suffix}.md", f"latest{suffix}.md"):
                with open(os.path.join(harness.RESULTS_DIR, name), "w") as f:
                    f.write(text)
            print(
                f"written: bench/results/{stamp}{suffix}.md, bench/results/latest{suffix}.md", file=sys.stderr
            )
            plots.after_run(os.path.join(harness.RESULTS_DIR, f"latest{suffix}.md"))
        return 0
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"memory bench failed: {e}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
