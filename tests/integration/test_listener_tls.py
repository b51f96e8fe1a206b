"""The SCP's DICOM TLS listener (``tls:``) against dcmtk's storescu with TLS: a client
with a certificate from the configured CA is served, one without is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer, start_router, write_config
from tests.support.synthetic import write_ct_series
from tests.support.syslog_receiver import make_tls_files

pytestmark = pytest.mark.integration


def test_tls_listener_serves_certified_clients_only(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    files = make_tls_files(tmp_path / "tls")
    series = write_ct_series(tmp_path / "ct", 3, rows=64, cols=64)
    tls_port = free_port()
    with CaptureSCP() as sink:
        dests = {"sink": {"ae_title": sink.ae_title, "host": "127.0.0.1", "port": sink.port}}
        tls = {"port": tls_port, "cert": str(files.server_cert), "key": str(files.server_key),
               "ca": str(files.ca), "require_client_cert": True}  # fmt: skip
        path, config = write_config(tmp_path / "router", redis_server.url, dests,
                                    "rules:\n  - name: all\n    forward: [sink]\n",
                                    tls=tls)  # fmt: skip
        router = start_router(path, config, workers=1)
        try:
            trusted = ["+tls", str(files.client_key), str(files.client_cert), "-pw",
                       "+cf", str(files.ca)]  # fmt: skip
            served = storescu(series, tls_port, extra_args=trusted)
            assert served.returncode == 0, served.stderr[-2000:]
            sink.wait_for_count(len(series))
            anonymous = storescu(series[:1], tls_port, extra_args=["+tla", "+cf", str(files.ca)])
            assert anonymous.returncode != 0
            plain = storescu(series[:1], tls_port)
            assert plain.returncode != 0
            assert len(router.audit_events("received")) == len(series)
        finally:
            router.stop()
