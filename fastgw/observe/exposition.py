"""The process-level series of the admin /metrics that a well-kept library already writes: prometheus-client
renders them, in the same text format as the gateway's own families (fastgw/observe/metrics.py).

  process_*                        the supervisor's CPU, memory, open descriptors and start time (Linux
                                   /proc, prometheus_client.ProcessCollector)
  fastgw_build_info                1, labelled with the fastgw and Python versions
  fastgw_tls_cert_expiry_seconds   per certificate the config names (listeners, their SNI certificates,
                                   upstream client certificates): the Unix time it expires (notAfter).
                                   Alert on `fastgw_tls_cert_expiry_seconds - time() < 14 * 86400`.

A certificate file is parsed when its path or modification time changes (a reload may name new files),
not at every scrape. A file that cannot be read or parsed is left out (its listener would not have loaded
it either; the reload or start that named it reported why).
"""
from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator

from cryptography import x509
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from fastgw import __version__
from fastgw.config.root import Config
from fastgw.config.schema import keypath


def certificates(cfg: Config) -> list[tuple[str, str]]:
    """(key path, file) of every certificate the config names."""
    out = []
    for i, t in enumerate(cfg.server.tls):
        out.append((f"server.tls[{i}].cert", t.cert))
        out += [(f"server.tls[{i}].sni[{j}].cert", s.cert) for j, s in enumerate(t.sni)]
    for name, up in cfg.upstreams.items():
        if up.tls is not None and up.tls.cert is not None:
            out.append((f"{keypath('upstreams', name)}.tls.cert", up.tls.cert))
    return out


class _Build(Collector):
    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("fastgw_build", "The running fastgw: its version and the Python it runs on.")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info


class _CertExpiry(Collector):
    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config
        self.parsed: dict[tuple[str, float], tuple[float, str] | None] = {}

    def expiry(self, path: str) -> tuple[float, str] | None:
        try:
            stamp = os.stat(path).st_mtime
        except OSError:
            return None
        if (path, stamp) not in self.parsed:
            try:
                with open(path, "rb") as f:
                    cert = x509.load_pem_x509_certificate(f.read())     # the first of the chain: the leaf
                value: tuple[float, str] | None = (cert.not_valid_after_utc.timestamp(), cert.subject.rfc4514_string())
            except (OSError, ValueError):
                value = None
            self.parsed = {k: v for k, v in self.parsed.items() if k[0] != path}
            self.parsed[(path, stamp)] = value
        return self.parsed[(path, stamp)]

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("fastgw_tls_cert_expiry_seconds",
                              "When a certificate the config names expires (notAfter), as a Unix time.",
                              labels=["key", "subject"])
        for key, path in certificates(self.config()):
            found = self.expiry(path)
            if found is not None:
                g.add_metric([key, found[1]], found[0])
        yield g


class Exposition:
    """The registry of the supervisor's library-rendered series; `config` returns the config served now."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(_Build())
        self.registry.register(_CertExpiry(config))

    def render(self) -> str:
        return generate_latest(self.registry).decode()
