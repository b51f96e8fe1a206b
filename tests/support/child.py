"""The lifecycle both test peers share: a child process, its log, its temporary folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO


class ChildProcess:
    """Stop, clean up and context-manage one peer process started by a subclass.

    Subclasses set ``_proc``, ``_log_file`` and ``_workdir`` in their ``start()``.
    """

    _graceful_stop = True

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: TextIO | None = None
        self._workdir: Path | None = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the child (SIGTERM, or SIGKILL when not graceful; SIGKILL on timeout)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                if self._graceful_stop:
                    self._proc.terminate()
                else:
                    self._proc.kill()
                try:
                    self._proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=timeout)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        """Stop the child and delete its temporary directory."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    @property
    def pid(self) -> int:
        """The child's process id (it must be running)."""
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None
