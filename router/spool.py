"""Durable storage of received instances between receipt and delivery.

An instance is acknowledged to the modality only once it is here, so every step
that puts a file into the spool is atomic and durable: the bytes go to a temporary
file on the same file system, are fsync'ed, renamed into place, and the directory
is fsync'ed (a directory the spool creates is fsync'ed in its parent as well). A
crash leaves either the whole file or nothing under ``incoming/``.

Keys are random hex strings chosen by the spool. They are never built from UIDs or
AE titles, which come from the network and could contain path separators, collide,
or leak identifiers into file names.

Layout below ``spool.dir``::

    tmp/        partial writes and files being received (never routed)
    incoming/   accepted instances waiting for routing or delivery
    done/       delivered instances kept for ``retention_hours``
    unmatched/  instances no rule matched, kept for inspection (``unmatched: keep``)
    unroutable/ instances the rules could not be applied to (unreadable values), kept
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

_KEY = re.compile(r"^[0-9a-f]{32}$")
_SUFFIX = ".dcm"


class SpoolError(Exception):
    """The spool cannot take or give an instance; the caller answers Out of Resources."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents, each new entry fsync'ed in its parent.

    Without the parent's fsync a power loss can take a new directory away, with every
    file in it that was itself fsync'ed.
    """
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():  # a file in the way
                raise
            continue  # another process made it meanwhile (and syncs it)
        _fsync_dir(folder.parent)


def new_key() -> str:
    """A fresh spool key: 128 random bits, hex."""
    return uuid.uuid4().hex


def check_key(key: str) -> str:
    """Refuse anything that is not a key this spool could have made."""
    if not _KEY.fullmatch(key):
        raise SpoolError(f"invalid spool key {key!r}")
    return key


class Spool:
    """One spool directory; safe to share between processes on one host."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.incoming = self.root / "incoming"
        self.done = self.root / "done"
        self.unmatched = self.root / "unmatched"
        self.unroutable = self.root / "unroutable"

    def ensure(self) -> None:
        """Create the directories; raise :class:`SpoolError` if that is not possible."""
        try:
            for folder in (self.tmp, self.incoming, self.done, self.unmatched, self.unroutable):
                _make_dirs(folder)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.root}: {exc}") from exc

    # --- where things are -------------------------------------------------------
    def path(self, key: str) -> Path:
        """Path of an accepted instance under ``incoming/``."""
        check_key(key)
        return self.incoming / key[:2] / f"{key}{_SUFFIX}"

    def find(self, key: str) -> Path | None:
        """The file for ``key`` wherever it is now, or None once it is gone."""
        for candidate in (
            self.path(key),
            self.done / f"{key}{_SUFFIX}",
            self.unmatched / f"{key}{_SUFFIX}",
            self.unroutable / f"{key}{_SUFFIX}",
        ):
            if candidate.exists():
                return candidate
        return None

    # --- capacity ---------------------------------------------------------------
    def free_mb(self) -> float:
        """Free space on the spool's file system for unprivileged writers, in MiB."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize / (1024 * 1024)

    def has_room(self, min_free_mb: int) -> bool:
        """False when accepting more would push free space below the configured floor."""
        try:
            return self.free_mb() >= min_free_mb
        except OSError:
            return False

    # --- putting instances in -----------------------------------------------------
    def adopt(self, received: Path) -> str:
        """Make a fully received temporary file durable under a new key.

        ``received`` must be on the spool's file system (the SCP receives into
        ``tmp/``), so the rename is atomic. Returns the key.
        """
        key = new_key()
        target = self.path(key)
        try:
            _fsync_file(received)
            try:
                os.rename(received, target)
            except FileNotFoundError:
                if not received.exists():
                    raise
                _make_dirs(target.parent)  # the first instance with this key prefix
                os.rename(received, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise SpoolError(f"cannot store instance in spool: {exc}") from exc
        return key

    def write_bytes(self, data: bytes) -> str:
        """Store ``data`` atomically and durably under a new key."""
        try:
            fd, name = _mkstemp(self.tmp)
        except OSError as exc:
            raise SpoolError(f"cannot create a file in {self.tmp}: {exc}") from exc
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return self.adopt(tmp)
        except (OSError, SpoolError) as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot store instance in spool: {exc}") from exc

    def write_dataset(self, dataset: Any) -> str:
        """Store a (changed) dataset in DICOM file format, in its own transfer syntax."""
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return self.write_bytes(buffer.getvalue())

    # --- taking instances out ---------------------------------------------------
    def discard(self, key: str) -> None:
        """Remove an accepted instance (used when its enqueue failed, or when done)."""
        self.path(key).unlink(missing_ok=True)

    def finish(self, key: str, retention_hours: float) -> None:
        """Every destination has the instance: delete it, or keep it for the retention period."""
        source = self.path(key)
        if retention_hours <= 0:
            source.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            os.rename(source, self.done / source.name)

    def keep_unmatched(self, key: str) -> Path:
        """Move an instance no rule matched to ``unmatched/`` for an operator to inspect."""
        return self._set_aside(key, self.unmatched)

    def hold_unroutable(self, key: str) -> Path:
        """Move an instance the rules could not be applied to (a value that cannot be
        read, an action that cannot be done) to ``unroutable/``: kept for an operator,
        and out of ``incoming/``, where it would only be tried again and fail again."""
        return self._set_aside(key, self.unroutable)

    def _set_aside(self, key: str, folder: Path) -> Path:
        source = self.path(key)
        target = folder / source.name
        os.rename(source, target)
        return target

    def sweep_done(self, retention_hours: float, now: float | None = None) -> int:
        """Delete delivered files older than the retention period; returns how many."""
        limit = (now if now is not None else time.time()) - retention_hours * 3600
        removed = 0
        for entry in os.scandir(self.done):
            try:
                if entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def sweep_tmp(self, older_than_s: float = 3600, now: float | None = None) -> int:
        """Remove temporary files left by a crash mid-receive (never acknowledged)."""
        limit = (now if now is not None else time.time()) - older_than_s
        removed = 0
        for entry in os.scandir(self.tmp):
            try:
                if entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def incoming_keys(self) -> list[str]:
        """Keys of every instance still waiting under ``incoming/``."""
        keys: list[str] = []
        if not self.incoming.exists():
            return keys
        for sub in sorted(self.incoming.iterdir()):
            if sub.is_dir():
                keys.extend(
                    p.stem for p in sorted(sub.glob(f"*{_SUFFIX}")) if _KEY.fullmatch(p.stem)
                )
        return keys

    def usage_bytes(self) -> int:
        """Bytes held under ``incoming/`` (for status output)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.incoming):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
        return total


def _mkstemp(folder: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, suffix=".part")
