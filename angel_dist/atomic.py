"""Atomic, durable writes: build under a temporary name in the target's directory, fsync it,
rename it over the target, fsync the directory.

Without the fsyncs a power loss after the rename can leave the new name pointing at a file whose
data never reached the disk (ext4 and XFS order neither the data before the rename nor the
rename itself). Temporary files and directories are created with mode 0666 / 0777 less the
umask, as `open` and `mkdir` create them, so published files follow the umask (a group-readable
run directory on a cluster stays group-readable).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file, or one directory (its entries: names created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root`, `root` included."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


def _create_temporary(parent: Path, prefix: str, directory: bool) -> Path:
    # tempfile.mkstemp/mkdtemp would create them 0600/0700 whatever the umask.
    while True:
        tmp = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            if directory:
                tmp.mkdir(0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success fsync it (for a directory, everything
    in it), rename it over `target` and fsync `target`'s directory.

    On an exception the temporary file or directory is removed and `target` is untouched.
    A directory that already exists at `target` is replaced as a whole.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(target.parent, f".{target.name}.tmp-", directory)
    try:
        yield tmp
        if tmp.is_dir():
            fsync_tree(tmp)
        else:
            fsync_path(tmp)
        if directory and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
        fsync_path(target.parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
