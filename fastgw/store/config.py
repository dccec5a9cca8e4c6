"""[redis]: how a worker reaches the shared store (standalone, Sentinel or Cluster), authenticates (ACL user,
password from the environment) and encrypts (TLS with a CA); the per-command deadline and the reconnect
pace of the circuit breaker. The keys a store user adds (the traffic policy's lease and heartbeat
settings) extend this struct.

A password is never written in the file: a config kept in git must not hold a secret, so `redis.url`
with `:password@` is refused and the password comes from the variable named by `password_env`.
"""
from __future__ import annotations

import os
import re
from typing import Literal

import msgspec

from fastgw.config.checks import check_file, parse_hostport
from fastgw.config.schema import Duration

URL = re.compile(r"redis://(?::(?P<pw>[^@/]*)@)?(?P<host>[^:/@]+)(?::(?P<port>\d+))?(?:/(?P<db>\d+))?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NODES = 32          # cluster primaries a worker connects to (the size of the per-worker node table)


class RedisSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    url: str = "redis://127.0.0.1:6379/0"   # standalone: redis://host:port[/db]
    nodes: list[str] = msgspec.field(default_factory=list)       # cluster: seed nodes "host:port"
    sentinels: list[str] = msgspec.field(default_factory=list)   # sentinel: "host:port" of each Sentinel
    master_name: str = "mymaster"           # sentinel: the monitored master's name
    username: str = ""                      # ACL user ("" = the default user)
    password_env: str = ""                  # environment variable holding the password ("" = none)
    tls: bool = False                       # TLS to every Redis node (not to the Sentinels' own port)
    tls_ca: str | None = None               # PEM bundle trusted for the Redis certificates; None = the system store
    timeout: Duration = 0.02                # per command; then the node's circuit breaker opens
    retry_interval: Duration = 0.2          # reconnect attempts (and topology re-checks) while a node is down


def password(rd: RedisSettings) -> str | None:
    """The password from the environment (None: none configured, or the variable is unset)."""
    return os.environ.get(rd.password_env) or None if rd.password_env else None


def check(rd: RedisSettings, errors: list[str]) -> None:
    m = URL.fullmatch(rd.url)
    if m is None:
        errors.append(f'redis.url: invalid URL "{rd.url}" (use "redis://host:port[/db]")')
    elif m["pw"] is not None:
        errors.append("redis.url: a password is written in the file; put it in an environment variable and "
                      "name that variable in redis.password_env")
    if rd.mode == "cluster":
        if not rd.nodes:
            errors.append('redis.nodes: mode = "cluster" needs at least one seed node "host:port"')
        if m is not None and m["db"] not in (None, "0"):
            errors.append("redis.url: a Redis Cluster has only database 0")
    if rd.mode == "sentinel":
        if not rd.sentinels:
            errors.append('redis.sentinels: mode = "sentinel" needs at least one Sentinel "host:port"')
        if not rd.master_name:
            errors.append('redis.master_name: mode = "sentinel" needs the name of the monitored master')
    for field, values in (("nodes", rd.nodes), ("sentinels", rd.sentinels)):
        for i, v in enumerate(values):
            try:
                parse_hostport(v)
            except ValueError as e:
                errors.append(f"redis.{field}[{i}]: {e}")
    if rd.password_env and not _ENV_NAME.fullmatch(rd.password_env):
        errors.append(f'redis.password_env: "{rd.password_env}" is not an environment variable name')
    if rd.username and not rd.password_env:
        errors.append("redis.username: an ACL user needs a password: set redis.password_env")
    if rd.tls_ca is not None:
        if not rd.tls:
            errors.append("redis.tls_ca: only used with redis.tls = true")
        check_file(rd.tls_ca, "redis.tls_ca", errors)
    for field, seconds in (("timeout", rd.timeout), ("retry_interval", rd.retry_interval)):
        if seconds <= 0:
            errors.append(f"redis.{field}: must be greater than 0")


def summary(rd: RedisSettings) -> list[str]:
    """`fastgw check` lines: where the store is and how it is reached."""
    where = {"standalone": rd.url, "cluster": "seeds " + ", ".join(rd.nodes),
             "sentinel": f'master "{rd.master_name}" from Sentinels ' + ", ".join(rd.sentinels)}[rd.mode]
    auth = f"user {rd.username or 'default'}, password from ${rd.password_env}" if rd.password_env else "no password"
    out = ["", f"redis: {rd.mode}, {where}; {auth}; " + ("TLS" if rd.tls else "plain TCP")]
    if rd.password_env and not os.environ.get(rd.password_env):
        out.append(f"  note: ${rd.password_env} is not set in this environment")
    return out
