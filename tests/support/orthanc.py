"""Run a throw-away Orthanc (``/usr/sbin/Orthanc``) as a DICOM storage peer.

:class:`Orthanc` writes a JSON configuration into a temporary directory
(storage and index live there too), starts the server, waits until its REST
API answers ``GET /system`` and offers a few REST helpers built on
:mod:`urllib` only.  The log (stdout and stderr) is kept in the temporary
directory while the server runs, and its tail is included in start-up errors.

The configuration makes Orthanc a promiscuous storage SCP: any calling or
called AE title, every SOP class (``UnknownSopClassAccepted``) and every
transfer syntax (``AcceptedTransferSyntaxes``: ``1.2.840.10008.1.*``), no
transcoding on ingest, no authentication, no plugins, HTTP from localhost
only (``RemoteAccessAllowed`` false).  Orthanc 1.10 has no option to bind its
HTTP or DICOM listeners to one address, so the ports listen on every
interface; tests only ever connect to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .child import ChildProcess
from .ports import LOCALHOST, free_port, wait_for_port

__all__ = ["ORTHANC_BINARY", "Orthanc", "OrthancError"]

ORTHANC_BINARY = "/usr/sbin/Orthanc"


#: URL opener that never goes through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OrthancError(RuntimeError):
    """Orthanc failed to start, died, or its REST API returned an error."""


class Orthanc(ChildProcess):
    """A temporary Orthanc server, used as a context manager.

    Parameters
    ----------
    aet:
        Orthanc's own AE title (``DicomAet``); called AE titles are not
        checked anyway.
    dicom_port, http_port:
        Ports to use; free ones when omitted.
    extra_config:
        Extra configuration keys, merged over the defaults (for example
        ``{"OverwriteInstances": True}`` or ``{"MaximumPduLength": 131072}``).
    startup_timeout:
        Seconds to wait for ``GET /system`` to answer.
    graceful_stop:
        Stop with SIGTERM and wait (Orthanc needs about 3 s to shut down its
        HTTP and DICOM servers).  When false, :meth:`stop` sends SIGKILL at
        once, which is fine for a throw-away server whose directory is
        deleted anyway.
    binary:
        Path of the Orthanc executable.

    Example
    -------
    ::

        with Orthanc() as orthanc:
            dcmsend(files, orthanc.dicom_port, called_ae=orthanc.aet)
            orthanc.wait_for_count(len(files), timeout=10)
    """

    def __init__(
        self,
        aet: str = "ORTHANC",
        dicom_port: int | None = None,
        http_port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
        graceful_stop: bool = True,
        binary: str = ORTHANC_BINARY,
    ) -> None:
        self.aet = aet
        self.host = LOCALHOST
        self.dicom_port = dicom_port if dicom_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self._extra_config = dict(extra_config or {})
        self._startup_timeout = startup_timeout
        self._graceful_stop = graceful_stop
        self._binary = binary
        super().__init__()

    # -- configuration -------------------------------------------------------
    def config(self, workdir: Path) -> dict[str, Any]:
        """Return the configuration written for a server living in ``workdir``."""
        storage = workdir / "storage"
        config: dict[str, Any] = {
            "Name": f"test-{self.aet}",
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "DicomServerEnabled": True,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomTlsEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "DicomModalities": {},
            "OrthancPeers": {},
            "Plugins": [],
            "LuaScripts": [],
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "SyncStorageArea": False,
            "OverwriteInstances": False,
            "HttpCompressionEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "TcpNoDelay": True,
            "KeepAlive": True,
            "DicomThreadsCount": 4,
            "DicomScpTimeout": 30,
            "StorageAccessOnFind": "Never",
            "DeidentifyLogs": True,
        }
        config.update(self._extra_config)
        return config

    # -- lifecycle -----------------------------------------------------------
    @property
    def workdir(self) -> Path:
        """Temporary directory holding config, storage and log."""
        if self._workdir is None:
            raise OrthancError("Orthanc is not started")
        return self._workdir

    @property
    def log_path(self) -> Path:
        """File collecting Orthanc's stdout and stderr."""
        return self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.http_port}"

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of Orthanc's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, OrthancError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Orthanc:
        """Write the configuration, start Orthanc and wait until it answers."""
        if self._proc is not None:
            raise OrthancError("Orthanc already started")
        if not os.access(self._binary, os.X_OK):
            raise OrthancError(f"{self._binary} not found (apt-get install orthanc)")
        self._workdir = Path(tempfile.mkdtemp(prefix="orthanc-"))
        config_path = self._workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(self._workdir), indent=2))
        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"
        self._log_file = self.log_path.open("w")
        self._proc = subprocess.Popen(
            [self._binary, str(config_path)],
            cwd=self._workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        last_error = ""
        while True:
            if self._proc.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self._proc.returncode} "
                    f"during start-up; log tail:\n{self.log_tail()}"
                )
            try:
                self.get_json("/system", timeout=2.0)
                break
            except (OSError, OrthancError) as exc:
                last_error = str(exc)
            if time.monotonic() >= deadline:
                raise OrthancError(
                    f"Orthanc REST API on port {self.http_port} did not answer "
                    f"within {self._startup_timeout:.0f} s ({last_error}); "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        remaining = max(1.0, deadline - time.monotonic())
        try:
            wait_for_port(self.host, self.dicom_port, timeout=remaining)
        except TimeoutError as exc:
            raise OrthancError(f"{exc}; log tail:\n{self.log_tail()}") from exc

    # -- REST ----------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 30.0,
    ) -> bytes:
        """Send one REST request and return the response body.

        Raises
        ------
        OrthancError
            On an HTTP error status (the body is included in the message).
        OSError
            If the server cannot be reached.
        """
        req = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={"Accept-Encoding": "identity"},
        )
        try:
            with _OPENER.open(req, timeout=timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from exc

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        """``GET path`` and decode the JSON answer."""
        return json.loads(self.request("GET", path, timeout=timeout))

    def instances(self) -> list[str]:
        """Orthanc identifiers of all stored instances (``GET /instances``)."""
        result: list[str] = self.get_json("/instances")
        return result

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of one instance (``/instances/ID/file``)."""
        return self.request("GET", f"/instances/{orthanc_id}/file")

    def sop_instance_uids(self) -> dict[str, str]:
        """Map SOP Instance UID -> Orthanc identifier for every instance.

        Uses a single ``GET /instances?expand`` whose answer carries each
        instance's main DICOM tags, so it stays cheap for hundreds of
        instances.
        """
        expanded: list[dict[str, Any]] = self.get_json("/instances?expand")
        return {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in expanded}

    def statistics(self) -> dict[str, Any]:
        """Server statistics (``GET /statistics``): counts and disk sizes."""
        stats: dict[str, Any] = self.get_json("/statistics")
        return stats

    def count_instances(self) -> int:
        """Number of stored instances."""
        return int(self.statistics()["CountInstances"])

    def delete_all(self) -> None:
        """Delete every stored patient (and so every instance)."""
        for patient in self.get_json("/patients"):
            self.request("DELETE", f"/patients/{patient}")

    def wait_for_count(self, n: int, timeout: float = 30.0) -> None:
        """Block until Orthanc stores at least ``n`` instances.

        Raises
        ------
        TimeoutError
            If fewer than ``n`` instances are stored after ``timeout`` s.
        OrthancError
            If the Orthanc process died.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise OrthancError(f"Orthanc is not running; log tail:\n{self.log_tail()}")
            count = self.count_instances()
            if count >= n:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Orthanc stores {count} of {n} expected instances after {timeout:.1f} s"
                )
            time.sleep(0.1)
