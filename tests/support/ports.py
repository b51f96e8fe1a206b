"""TCP port helpers for tests that run peers on the loopback interface.

Everything here talks to ``127.0.0.1`` (or the host given explicitly); no
other address is ever contacted.
"""

from __future__ import annotations

import socket
import time

__all__ = ["LOCALHOST", "free_port", "wait_for_port"]

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on ``127.0.0.1`` that is currently free.

    The port is found by binding to port 0 and letting the kernel pick one,
    then closing the socket.  There is an unavoidable race between closing it
    and the caller binding it again, which is harmless in practice because the
    kernel hands out ephemeral ports in rotation.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until a TCP connection to ``host:port`` succeeds.

    Parameters
    ----------
    host:
        Address to connect to, normally ``127.0.0.1``.
    port:
        TCP port to connect to.
    timeout:
        Seconds to keep trying before giving up.

    Raises
    ------
    TimeoutError
        If nothing accepted a connection on ``host:port`` within ``timeout``
        seconds.  The message names the address and the last connection error.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"nothing is listening on {host}:{port} after {timeout:.1f} s "
                f"(last error: {last_error})"
            )
        time.sleep(0.05)
