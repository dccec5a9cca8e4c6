"""Traffic-policy config: errors name the key path and the reason; `fastgw check` prints the plans and,
for lease plans, the worst-case overshoot."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastgw.config.root import ConfigError, loads

BASE = '''
[upstreams.a]
targets = ["127.0.0.1:9000"]

[[routes]]
name = "r"
path = "/r"
upstream = "a"
'''


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return info.value.errors


def test_errors_name_the_key() -> None:
    text = BASE + '''plan = "gld"

[plans.gold]
limits = [{ rate = "10/s", burst = 0 }, { quota = "5/week" }, { rate = "1/s", quota = "1/day" },
          { concurrency = 2, key = ["cookie"] }, { rate = "100/y" }]
sync = "lease"

[consumers.partner-a]
plan = "platinum"

[redis]
url = "http://x"
lease_max = 0
'''
    assert errors(text) == [
        'plans.gold.limits[0].burst: must be at least 1 (1 is spike arrest)',
        'plans.gold.limits[1].quota: invalid quota "5/week" (use "<count>/<minute|hour|day|month>", e.g. "10000/day")',
        'plans.gold.limits[2]: set exactly one of rate, quota or concurrency (got rate, quota)',
        'plans.gold.limits[3].key[0]: invalid key part "cookie" (use "consumer", "ip", "route" or "header:NAME")',
        'plans.gold.limits[4].rate: invalid rate "100/y" (use "<count>/<s|min|h|day>", e.g. "100/s", "6000/min")',
        'plans.gold.limits[4].name: two limits of the plan are called "rate" (set name to tell them apart)',
        'routes[0].plan: unknown plan "gld" (known: gold)',
        'consumers.partner-a.plan: unknown plan "platinum" (known: gold)',
        'redis.url: invalid URL "http://x" (use "redis://host:port[/db]")',
        'redis.lease_max: must be at least 1',
    ]


def test_sync_and_store_error_are_checked() -> None:
    errs = errors(BASE + '[plans.p]\nlimits = [{ rate = "1/s" }]\nsync = "eventual"\n')
    assert errs == ['plans.p.sync: expected "local" or "lease" or "strict", got string "eventual"']


def test_check_prints_lease_overshoot(tmp_path: Path) -> None:
    cfg = tmp_path / "lease.toml"
    cfg.write_text('[server]\nworkers = 4\n' + BASE + 'plan = "gold"\n\n[plans.gold]\n'
                   'limits = [{ rate = "1000/s", burst = 500 }, { rate = "100/s", name = "slow", enforce = false }]\n'
                   'sync = "lease"\n\n[plans.local]\nlimits = [{ rate = "5/s" }]\nsync = "strict"\n'
                   '\n[redis]\nurl = "redis://127.0.0.1:6379/0"\nlease_max = 80\n')
    out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    # Batch cap per worker and key: min(lease_max = 80, tightest enforced rate 1000/s x lease_period 0.1 s
    # = 100); a worker holds at most two batches (the rest of one, and the next, fetched at half).
    assert "gold: sync=lease, on_store_error=local" in out.stdout
    assert ("rate (limits[0]): lease worst-case overshoot per key: 160 requests per worker (2 batches of at "
            "most 80) = 640 per instance (4 workers), times the number of instances") in out.stdout
    assert "local: sync=strict, on_store_error=local" in out.stdout


def test_expected_instances_is_checked_and_check_says_which_share_applies(tmp_path: Path) -> None:
    text = BASE + '[plans.p]\nlimits = [{ rate = "1/s" }]\nsync = "strict"\n\n[redis]\nurl = "redis://h:1/0"\n'
    assert errors(text + "expected_instances = 0\n") == ["redis.expected_instances: must be between 1 and 10000"]
    root = Path(__file__).resolve().parents[1]
    for extra, want in (("", "redis.expected_instances unset: an instance that starts while Redis is down "
                             "enforces the whole limit until it sees a heartbeat"),
                        ("expected_instances = 3\n", "redis.expected_instances = 3")):
        cfg = tmp_path / "share.toml"
        cfg.write_text(text + extra)
        out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], capture_output=True,
                             text=True, cwd=root)
        assert out.returncode == 0, out.stderr
        assert ("while Redis is unavailable: limits / the larger of the live instances last seen in Redis and "
                + want) in out.stdout
