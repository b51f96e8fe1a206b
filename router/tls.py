"""TLS client contexts: for destinations (DICOM TLS, PS3.15 B.1) and the audit collector.

One policy for every connection the router opens: TLS 1.2 or later, the peer's
certificate checked against a CA file (the system's CAs when none is given) and
against the host name or address the router connects to; the router's own
certificate and key for peers that ask for one (mutual TLS).
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path


def client_context(
    ca: Path | None, cert: Path | None, key: Path | None, verify: bool = True
) -> ssl.SSLContext:
    """A new client context; raises OSError or ssl.SSLError if a file cannot be loaded.

    ``verify=False`` accepts any certificate (tests only: it gives up knowing who
    is at the other end).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context


@functools.lru_cache(maxsize=64)
def shared_client_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """``client_context`` made once per process and set of files (one per destination,
    not one per connection: loading a CA bundle costs milliseconds)."""
    return client_context(ca, cert, key)
