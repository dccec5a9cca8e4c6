"""The admin /metrics series prometheus-client renders: process_*, fastgw_build_info and the expiry of
every certificate the config names, following a reload."""
from __future__ import annotations

import platform
import signal
from pathlib import Path

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from fastgw import __version__
from tests.certs import CA, write_pair
from tests.procutil import Gateway, Origin, admin_get, config, metric


def _expiry(pem: str) -> float:
    return x509.load_pem_x509_certificate(Path(pem).read_bytes()).not_valid_after_utc.timestamp()


def test_process_build_and_certificate_series(tmp_path: Path) -> None:
    ca = CA("test-ca")
    api = write_pair(tmp_path, "api", ca.issue("api.test", ["api.test"]))
    extra = write_pair(tmp_path, "extra", ca.issue("extra.test", ["extra.test"]))
    origin = Origin()
    path = tmp_path / "gw.toml"

    def write(cert: tuple[str, str]) -> None:
        path.write_text(config(origin, extra_server="")
                        + f'[[server.tls]]\nlisten = ["127.0.0.1:0"]\ncert = "{cert[0]}"\nkey = "{cert[1]}"\n'
                        f'sni = [{{ cert = "{extra[0]}", key = "{extra[1]}" }}]\n')

    write(api)
    gw = Gateway(path, workers=1)
    try:
        gw.wait_ready()
        status, text, _ = admin_get(gw.admin_base + "/metrics")
        assert status == 200
        names = [f.name for f in text_string_to_metric_families(text)]      # the whole page parses
        assert len(names) == len(set(names)), "a family is rendered twice"
        assert metric(text, "process_start_time_seconds") > 0 and metric(text, "process_open_fds") > 0
        assert metric(text, "process_resident_memory_bytes") > 0
        assert metric(text, "fastgw_build_info", python=platform.python_version(), version=__version__) == 1
        assert metric(text, "fastgw_tls_cert_expiry_seconds", key="server.tls[0].cert",
                      subject="CN=api.test") == _expiry(api[0])
        assert metric(text, "fastgw_tls_cert_expiry_seconds", key="server.tls[0].sni[0].cert",
                      subject="CN=extra.test") == _expiry(extra[0])
        # A reload naming another certificate: the series follows it.
        other = write_pair(tmp_path, "other", CA("other-ca").issue("other.test", ["other.test"]))
        write(other)
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_reload")
        text = admin_get(gw.admin_base + "/metrics")[1]
        assert metric(text, "fastgw_tls_cert_expiry_seconds", key="server.tls[0].cert",
                      subject="CN=other.test") == _expiry(other[0])
        assert 'subject="CN=api.test"' not in text
    finally:
        gw.close()
        origin.close()
