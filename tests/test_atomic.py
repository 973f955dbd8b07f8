"""Atomic writes: durable (fsync, rename, fsync the directory) and following the umask."""

import os
import stat

import pytest

from angel_dist.atomic import atomic_path, write_json


@pytest.fixture
def umask():
    def set_(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_published_files_and_directories_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "d", directory=True) as tmp:
        (tmp / "inner.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "d" / "inner.txt").stat().st_mode) == 0o666 & ~mask


def _record_calls(monkeypatch) -> list[tuple[str, str]]:
    """("fsync", path) and ("replace", target) in call order."""
    calls = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst):
        calls.append(("replace", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return calls


def test_a_file_is_fsynced_then_renamed_then_its_directory_fsynced(tmp_path, monkeypatch):
    calls = _record_calls(monkeypatch)
    with atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("data")
    (kind0, tmp0), *rest = calls
    assert kind0 == "fsync" and os.path.basename(tmp0).startswith(".out.txt.tmp-")
    assert rest == [("replace", str(tmp_path / "out.txt")), ("fsync", str(tmp_path))]
    assert (tmp_path / "out.txt").read_text() == "data"


def test_a_directory_is_fsynced_whole_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    calls = _record_calls(monkeypatch)
    with atomic_path(tmp_path / "d", directory=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
        (tmp / "b.txt").write_text("b")
    first_replace = next(i for i, (kind, _) in enumerate(calls) if kind == "replace")
    synced = {os.path.relpath(path, tmp) for _, path in calls[:first_replace]}
    assert synced == {".", "sub", "sub/a.txt", "b.txt"}  # every file and directory of the new tree
    assert calls[-1] == ("fsync", str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["b.txt", "sub"]


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
