"""DNS discovery with a resolver under the test's control: the gateway runs in its own user and mount
namespace (unshare) where /etc/hosts is a file the test rewrites in place, so the system resolver
(getaddrinfo) the gateway uses answers what the test says. Origins listen on 127.0.0.2-4, one port; the
upstream's one target is the name. Addresses added and removed under load cost no request; a name that
stops resolving keeps its last good addresses, and /status/upstreams says so."""
from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.upstreams import EchoOrigin

NAME = "accounts.fastgw-test"


def admin_get(gw, path: str) -> str:  # type: ignore[no-untyped-def]
    admin = next(e["admin"] for e in gw.events if e.get("event") == "started")
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as r:
        return r.read().decode()


def write_hosts(path: Path, *ips: str) -> None:
    """Rewrite the file in place: the namespace's /etc/hosts is bound to this inode."""
    with open(path, "r+") as f:
        f.seek(0)
        f.truncate()
        f.write("127.0.0.1 localhost\n" + "".join(f"{ip} {NAME}\n" for ip in ips))


def served(origins: dict[str, EchoOrigin]) -> dict[str, int]:
    return {ip: len(o.requests) for ip, o in origins.items()}


def test_addresses_join_and_leave_under_load_and_a_failing_name_keeps_its_last_set(gateway, tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: add it to .ci/run's apt list")
    first = EchoOrigin().start("127.0.0.2")
    port = first.port
    origins = {"127.0.0.2": first, "127.0.0.3": EchoOrigin().start("127.0.0.3", port),
               "127.0.0.4": EchoOrigin().start("127.0.0.4", port)}
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    write_hosts(hosts, "127.0.0.2", "127.0.0.3")
    prefix = ["unshare", "-rm", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$0" "$@"']
    try:
        gw = gateway.start({"u": {"targets": [f"{NAME}:{port}"], "resolve_every": "300ms"}},
                           [{"name": "r", "path": "/*", "upstream": "u"}], server={"workers": 2}, prefix=prefix)
        statuses: Counter = Counter()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=gw.url, timeout=10) as c:
                while not stop.is_set():
                    statuses[c.get("/x").status_code] += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            # Joins are waited for (a join never seen fails at the deadline); a leave and a failing name get
            # 1 s (3 resolve_every) to be seen, then 0.5 s of the 4 clients' traffic (hundreds of requests)
            # shows where it goes.
            assert first.wait_for(lambda: all(served(origins)[ip] > 0 for ip in ("127.0.0.2", "127.0.0.3")))
            assert served(origins)["127.0.0.4"] == 0
            write_hosts(hosts, "127.0.0.2", "127.0.0.3", "127.0.0.4")          # one joins
            assert first.wait_for(lambda: served(origins)["127.0.0.4"] > 0), served(origins)
            write_hosts(hosts, "127.0.0.3", "127.0.0.4")                       # one leaves
            time.sleep(1.0)
            left = served(origins)
            time.sleep(0.5)
            assert served(origins)["127.0.0.2"] == left["127.0.0.2"], "a vanished address still gets traffic"
            write_hosts(hosts)                                                 # the name no longer resolves
            time.sleep(1.0)
            failing = served(origins)
            time.sleep(0.5)
            now = served(origins)
            assert now["127.0.0.3"] > failing["127.0.0.3"] and now["127.0.0.4"] > failing["127.0.0.4"]
            target = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"][0]
            assert target["target"] == f"{NAME}:{port}"
            assert target["dns"]["addresses"] == 2 and target["dns"]["failing_since"] is not None, target
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert set(statuses) == {200}, statuses
    finally:
        for o in origins.values():
            o.stop()


def test_the_prober_checks_each_resolved_address_and_the_status_lists_them(gateway, tmp_path: Path) -> None:
    """With [health] on a name target, every address the name resolves to is probed and judged on its own
    record (the one the balancers pick); /status/upstreams lists them under the name, each with its state."""
    from tests.test_health_checks import CheckedOrigin
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: add it to .ci/run's apt list")
    first = CheckedOrigin().start("127.0.0.2")
    port = first.port
    origins = {"127.0.0.2": first, "127.0.0.3": CheckedOrigin().start("127.0.0.3", port)}
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    write_hosts(hosts, "127.0.0.2", "127.0.0.3")
    prefix = ["unshare", "-rm", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$0" "$@"']
    try:
        gw = gateway.start({"u": {"targets": [f"{NAME}:{port}"], "resolve_every": "300ms",
                                  "health": {"interval": "100ms", "timeout": "80ms", "healthy": 1,
                                             "unhealthy": 2}}},
                           [{"name": "r", "path": "/*", "upstream": "u"}], server={"workers": 2}, prefix=prefix)
        origins["127.0.0.3"].sick = True

        def name_target() -> dict:
            return json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"][0]

        def states() -> dict:
            return {t["target"]: (t["state"], t["reason"]) for t in name_target()["dns"]["targets"]}

        # Waited for, each with a deadline (5 s), instead of fixed sleeps of 1.5, 0.6 and 1 s.
        want = {f"127.0.0.2:{port}": ("up", None), f"127.0.0.3:{port}": ("down", "health")}
        assert first.wait_for(lambda: all(o.probes >= 5 for o in origins.values()) and states() == want), \
            ({ip: o.probes for ip, o in origins.items()}, name_target())
        assert all(r.head.values("host") == [f"{NAME}:{port}"] for o in origins.values()
                   for r in o.requests if r.head.target == "/healthz")
        target = name_target()
        assert target["state"] == "up"                 # the name's own record: not judged once it resolved
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            assert Counter(c.get("/x").status_code for _ in range(40)) == {200: 40}
        traffic = {ip: sum(1 for r in o.requests if r.head.target == "/x") for ip, o in origins.items()}
        assert traffic == {"127.0.0.2": 40, "127.0.0.3": 0}, traffic        # the down address gets none
        origins["127.0.0.3"].sick = False
        assert first.wait_for(lambda: {st for st, _ in states().values()} == {"up"}), name_target()
        write_hosts(hosts, "127.0.0.2")                # a vanished address leaves the list
        assert first.wait_for(lambda: list(states()) == [f"127.0.0.2:{port}"]), name_target()
    finally:
        for o in origins.values():
            o.stop()
