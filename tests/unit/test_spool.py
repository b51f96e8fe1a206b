"""router.spool: atomic, durable storage keyed by random keys."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

import router.spool as spool_module
from router.spool import Spool, SpoolError, check_key, new_key

KEY_RE = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# --- keys -------------------------------------------------------------------------
def test_new_key_shape_and_uniqueness() -> None:
    keys = {new_key() for _ in range(500)}
    assert len(keys) == 500
    assert all(KEY_RE.match(k) for k in keys)


def test_check_key_accepts_its_own_keys() -> None:
    key = new_key()
    assert check_key(key) == key


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "../" + "a" * 29,
        "a" * 31,
        "a" * 33,
        "A" * 32,
        "g" * 32,
        "",
        "a" * 30 + "/b",
        "/" + "a" * 31,
        "1.2.840.10008.5.1.4.1.1.2",
    ],
)
def test_check_key_refuses_foreign_keys(bad: str) -> None:
    with pytest.raises(SpoolError, match="invalid spool key"):
        check_key(bad)


def test_check_key_refuses_trailing_newline() -> None:
    with pytest.raises(SpoolError):
        check_key("a" * 32 + "\n")


def test_path_refuses_traversal(spool: Spool) -> None:
    with pytest.raises(SpoolError):
        spool.path("../../etc/passwd")
    with pytest.raises(SpoolError):
        spool.find("../x")
    with pytest.raises(SpoolError):
        spool.discard("../x")


def test_path_layout(spool: Spool) -> None:
    key = "ab" + "0" * 30
    assert spool.path(key) == spool.incoming / "ab" / f"{key}.dcm"


# --- ensure -------------------------------------------------------------------------
def test_ensure_creates_all_folders_and_is_idempotent(tmp_path: Path) -> None:
    s = Spool(tmp_path / "a" / "b")
    s.ensure()
    s.ensure()
    for folder in (s.tmp, s.incoming, s.done, s.unmatched):
        assert folder.is_dir()


def test_ensure_raises_spool_error_when_root_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.write_bytes(b"not a dir")
    with pytest.raises(SpoolError, match="cannot create spool directory"):
        Spool(root).ensure()


def test_ensure_raises_spool_error_when_incoming_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    (root / "incoming").write_bytes(b"x")
    with pytest.raises(SpoolError, match="cannot create spool directory"):
        Spool(root).ensure()


# --- writing ------------------------------------------------------------------------
def test_write_bytes_stores_exact_bytes_under_new_key(spool: Spool) -> None:
    data = b"DICM" + bytes(range(256)) * 10
    key = spool.write_bytes(data)
    assert KEY_RE.match(key)
    assert spool.path(key).read_bytes() == data
    assert spool.find(key) == spool.path(key)
    assert files_under(spool.tmp) == []


def test_keys_never_derived_from_content(spool: Spool) -> None:
    data = b"same bytes"
    first, second = spool.write_bytes(data), spool.write_bytes(data)
    assert first != second
    assert spool.path(first).read_bytes() == spool.path(second).read_bytes() == data
    assert sorted(spool.incoming_keys()) == sorted([first, second])


def test_write_bytes_empty_payload(spool: Spool) -> None:
    key = spool.write_bytes(b"")
    assert spool.path(key).read_bytes() == b""


def test_write_bytes_fails_cleanly_when_incoming_is_a_file(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    s.ensure()
    s.incoming.rmdir()
    s.incoming.write_bytes(b"I am a file")
    with pytest.raises(SpoolError):
        s.write_bytes(b"payload")
    assert list(s.tmp.iterdir()) == []
    assert s.incoming.read_bytes() == b"I am a file"


def test_write_bytes_without_tmp_raises_spool_error(tmp_path: Path) -> None:
    s = Spool(tmp_path / "never-ensured")
    with pytest.raises(SpoolError, match="cannot create a file"):
        s.write_bytes(b"x")


def test_adopt_moves_received_file_into_incoming(spool: Spool) -> None:
    received = spool.tmp / "recv.part"
    received.write_bytes(b"received")
    key = spool.adopt(received)
    assert not received.exists()
    assert spool.path(key).read_bytes() == b"received"
    assert spool.incoming_keys() == [key]


@pytest.fixture
def fsynced_dirs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Directories the spool fsyncs, in order (each still really fsync'ed)."""
    seen: list[Path] = []
    real = spool_module._fsync_dir

    def recording(path: Path) -> None:
        seen.append(Path(path))
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", recording)
    return seen


def test_ensure_syncs_each_new_directory_in_its_parent(
    tmp_path: Path, fsynced_dirs: list[Path]
) -> None:
    root = tmp_path / "new" / "spool"
    Spool(root).ensure()
    assert fsynced_dirs[:2] == [tmp_path, tmp_path / "new"]
    assert set(fsynced_dirs[2:]) == {root}  # tmp, incoming, done, unmatched are in root
    fsynced_dirs.clear()
    Spool(root).ensure()
    assert fsynced_dirs == []  # nothing new, nothing to sync


def test_adopt_syncs_a_new_key_directory_in_incoming_once(
    spool: Spool, fsynced_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def received(name: str) -> Path:
        path = spool.tmp / name
        path.write_bytes(b"DICM")
        return path

    first = spool.adopt(received("a"))
    # The key's folder is new: its entry in incoming/ is made durable, then the file's.
    assert fsynced_dirs == [spool.incoming, spool.path(first).parent]
    fsynced_dirs.clear()
    same_folder = first[:2] + new_key()[2:]
    monkeypatch.setattr(spool_module, "new_key", lambda: same_folder)
    second = spool.adopt(received("b"))
    assert second == same_folder
    assert fsynced_dirs == [spool.path(second).parent]  # folder exists: only the rename


def test_adopt_missing_file_raises_spool_error(spool: Spool) -> None:
    with pytest.raises(SpoolError):
        spool.adopt(spool.tmp / "missing.part")
    assert spool.incoming_keys() == []


# --- taking out ---------------------------------------------------------------------
def test_discard_removes_and_is_idempotent(spool: Spool) -> None:
    key = spool.write_bytes(b"x")
    spool.discard(key)
    assert spool.find(key) is None
    spool.discard(key)  # already gone: no error
    assert spool.incoming_keys() == []


def test_finish_with_zero_retention_deletes(spool: Spool) -> None:
    key = spool.write_bytes(b"x")
    spool.finish(key, retention_hours=0)
    assert spool.find(key) is None
    assert list(spool.done.iterdir()) == []


def test_finish_with_retention_moves_to_done(spool: Spool) -> None:
    key = spool.write_bytes(b"payload")
    spool.finish(key, retention_hours=24)
    assert not spool.path(key).exists()
    found = spool.find(key)
    assert found == spool.done / f"{key}.dcm"
    assert found.read_bytes() == b"payload"
    assert spool.incoming_keys() == []


def test_finish_twice_is_harmless(spool: Spool) -> None:
    key = spool.write_bytes(b"x")
    spool.finish(key, retention_hours=1)
    spool.finish(key, retention_hours=1)
    spool.finish(key, retention_hours=0)
    assert spool.find(key) == spool.done / f"{key}.dcm"


def test_keep_unmatched(spool: Spool) -> None:
    key = spool.write_bytes(b"nobody wants me")
    target = spool.keep_unmatched(key)
    assert target == spool.unmatched / f"{key}.dcm"
    assert target.read_bytes() == b"nobody wants me"
    assert spool.find(key) == target
    assert spool.incoming_keys() == []


def test_find_unknown_key_is_none(spool: Spool) -> None:
    assert spool.find(new_key()) is None


# --- sweeping -----------------------------------------------------------------------
def test_sweep_done_removes_only_old_files(spool: Spool) -> None:
    old, fresh = spool.write_bytes(b"old"), spool.write_bytes(b"fresh")
    spool.finish(old, 1)
    spool.finish(fresh, 1)
    age(spool.done / f"{old}.dcm", 3 * 3600)
    age(spool.done / f"{fresh}.dcm", 60)
    assert spool.sweep_done(retention_hours=2) == 1
    assert spool.find(old) is None
    assert spool.find(fresh) is not None


def test_sweep_done_uses_given_now(spool: Spool) -> None:
    key = spool.write_bytes(b"x")
    spool.finish(key, 1)
    assert spool.sweep_done(retention_hours=1, now=time.time()) == 0
    assert spool.sweep_done(retention_hours=1, now=time.time() + 2 * 3600) == 1
    assert spool.find(key) is None


def test_sweep_tmp_removes_only_stale_partials(spool: Spool) -> None:
    stale, recent = spool.tmp / "stale.part", spool.tmp / "recent.part"
    stale.write_bytes(b"s")
    recent.write_bytes(b"r")
    age(stale, 7200)
    assert spool.sweep_tmp(older_than_s=3600) == 1
    assert not stale.exists()
    assert recent.exists()


def test_sweep_tmp_never_touches_incoming(spool: Spool) -> None:
    key = spool.write_bytes(b"x")
    age(spool.path(key), 10 * 86400)
    assert spool.sweep_tmp(older_than_s=0, now=time.time() + 10) == 0
    assert spool.path(key).exists()


# --- listing ------------------------------------------------------------------------
def test_incoming_keys_lists_only_valid_spool_files(spool: Spool) -> None:
    keys = sorted(spool.write_bytes(bytes([i])) for i in range(5))
    (spool.incoming / keys[0][:2] / "README.txt").write_text("x")
    (spool.incoming / keys[0][:2] / "notakey.dcm").write_text("x")
    (spool.incoming / "stray.dcm").write_text("x")
    assert spool.incoming_keys() == keys


def test_incoming_keys_when_folder_missing(tmp_path: Path) -> None:
    assert Spool(tmp_path / "none").incoming_keys() == []


def test_usage_bytes_counts_incoming_only(spool: Spool) -> None:
    a = spool.write_bytes(b"x" * 100)
    spool.write_bytes(b"y" * 50)
    spool.finish(a, 1)
    (spool.tmp / "p.part").write_bytes(b"z" * 1000)
    assert spool.usage_bytes() == 50


def test_has_room(spool: Spool) -> None:
    assert spool.has_room(0) is True
    assert spool.has_room(10**12) is False


def test_has_room_false_when_root_missing(tmp_path: Path) -> None:
    assert Spool(tmp_path / "missing").has_room(0) is False
