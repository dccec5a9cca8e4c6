"""Helpers for the traffic-policy tests: gateway configs with plans, and gateways with N workers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from procutil import Gateway, admin_get

HERE = Path(__file__).resolve().parent


def config(origin_addr: str, routes: str, plans: str, redis_url: str | None = None, extra: str = "") -> str:
    text = ('[server]\nlisten = ["127.0.0.1:0"]\n'
            '[admin]\nlisten = "127.0.0.1:0"\n'
            f'[upstreams.origin]\ntargets = ["{origin_addr}"]\n' + routes + plans + extra)
    if redis_url:
        text += f'\n[redis]\nurl = "{redis_url}"\n'
    return text


def start(tmp: Path, text: str, workers: int, name: str = "gw") -> Gateway:
    path = tmp / f"{name}.toml"
    path.write_text(text)
    gw = Gateway(path, workers=workers)
    gw.wait_ready()
    return gw


def load(duration: float, path: str, header: str, addrs: list[str], conns: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "rl_load.py"), str(duration), path, header, ",".join(addrs),
                             str(conns)], stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out)


def metrics(gw: Gateway) -> str:
    return admin_get(gw.admin_base + "/metrics")[1]
