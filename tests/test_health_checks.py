"""Active health checks: one prober per host (probes counted at the origins with 2 workers), a target
marked down after `unhealthy` failed probes and back after `healthy` passes, shown in /status/upstreams."""
from __future__ import annotations

import json
import time
from collections import Counter

from tests.test_outlier import admin_get
from tests.upstreams import EchoOrigin


class CheckedOrigin(EchoOrigin):
    """Answers /healthz with 200, or 503 while `sick`; counts the probes it receives."""

    sick = False
    probes = 0

    async def respond(self, rec, writer):  # type: ignore[no-untyped-def]
        if rec.head.target == "/healthz":
            self.probes += 1
            if self.sick:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return True
        return await super().respond(rec, writer)


def states(gw) -> dict[str, str]:  # type: ignore[no-untyped-def]
    targets = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"]
    return {t["target"]: t["state"] for t in targets}


def test_one_prober_per_host_marks_a_sick_target_down_and_back(gateway) -> None:
    origins = [CheckedOrigin().start() for _ in range(2)]
    try:
        gw = gateway.start({"u": {"targets": [o.addr for o in origins],
                                  "health": {"interval": "200ms", "timeout": "150ms", "healthy": 2,
                                             "unhealthy": 2}}},
                           [{"name": "r", "path": "/*", "upstream": "u"}], server={"workers": 2})
        before = [o.probes for o in origins]
        start = time.monotonic()
        time.sleep(2.0)
        elapsed = time.monotonic() - start
        # One prober: about elapsed / interval probes per target (+-10% jitter); a prober per worker
        # would send twice as many.
        for o, b in zip(origins, before, strict=True):
            assert 0.6 * elapsed / 0.2 <= o.probes - b <= 1.3 * elapsed / 0.2, (o.probes - b, elapsed)
        origins[0].sick = True
        time.sleep(0.8)                                      # 2 failed probes at ~0.2 s each
        assert states(gw)[origins[0].addr] == "down"
        n = len([r for r in origins[0].requests if r.head.target != "/healthz"])
        with gw.client() as c:
            codes = Counter(c.get("/x").status_code for _ in range(40))
        assert codes == {200: 40}
        assert len([r for r in origins[0].requests if r.head.target != "/healthz"]) == n   # no traffic
        text = admin_get(gw, "/metrics")
        assert f'fastgw_upstream_ejections_total{{upstream="u",target="{origins[0].addr}",reason="health"}} 1' in text
        origins[0].sick = False
        time.sleep(0.8)                                      # 2 passing probes
        assert states(gw)[origins[0].addr] == "up"
        with gw.client() as c:
            for _ in range(20):
                c.get("/x")
        assert len([r for r in origins[0].requests if r.head.target != "/healthz"]) > n
    finally:
        for o in origins:
            o.stop()


def test_a_target_a_check_brings_back_slow_starts(gateway) -> None:
    """The prober counts the return in the upstream's record; the workers ramp the target up from it."""
    origins = [CheckedOrigin().start() for _ in range(2)]
    try:
        gw = gateway.start({"u": {"targets": [o.addr for o in origins], "slow_start": "5s",
                                  "health": {"interval": "100ms", "timeout": "80ms", "healthy": 1,
                                             "unhealthy": 1}}},
                           [{"name": "r", "path": "/*", "upstream": "u"}], server={"workers": 2})
        origins[0].sick = True
        deadline = time.monotonic() + 5
        while states(gw)[origins[0].addr] != "down" and time.monotonic() < deadline:
            time.sleep(0.02)
        origins[0].sick = False
        while states(gw)[origins[0].addr] != "up" and time.monotonic() < deadline:
            time.sleep(0.02)
        n = len([r for r in origins[0].requests if r.head.target != "/healthz"])
        with gw.client() as c:
            for _ in range(100):                            # within the window's first second or so
                assert c.get("/x").status_code == 200
        back = len([r for r in origins[0].requests if r.head.target != "/healthz"]) - n
        assert back < 30, back                               # at full weight: 50 of 100
    finally:
        for o in origins:
            o.stop()
