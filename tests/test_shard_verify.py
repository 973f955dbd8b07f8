"""Shard sets verified once per set (angel_dist/shards/verify.py): the driver's verification and its
record, readers that trust it only for tars unchanged since, and what it must not vouch for."""

import json
import os
import shutil
import tarfile

import pytest

from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
from angel_dist.errors import BadInputError
from angel_dist.shards import reader, verify
from angel_dist.shards.reader import ReaderConfig, ShardLoader, iter_shard, open_shard_sets
from angel_dist.shards.verify import RECORD, file_identity, verified_shard_sets
from angel_dist.digest import file_sha256
from angel_dist.tokenizer import train_tokenizer
from test_shards import craft_shard, synthetic_kb


@pytest.fixture(scope="module")
def clean(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    synthetic_kb(d / "kb.parquet", n=200)
    train_tokenizer(d / "kb.parquet", 600, d / "tok", progress=False)
    build_pretrain_corpus(d / "kb.parquet", str(d / "tok"), d / "set", PretrainCorpusConfig(shards=3), workers=1,
                          progress=False)
    assert not (d / "set" / RECORD).exists()  # writing a set verifies nothing: its first driver does
    return d / "set"


@pytest.fixture
def copy(clean, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(clean, out)
    return out


@pytest.fixture
def full_checks(monkeypatch):
    """The tars each reader check of this process hashed and walked (full) or only sized."""
    seen = {"full": [], "size": []}
    real = reader.check_tar

    def spy(buf, shard, offsets, verify):
        seen["full" if verify else "size"].append(os.path.basename(shard.path))
        return real(buf, shard, offsets, verify)

    monkeypatch.setattr(reader, "check_tar", spy)
    return seen


def _read_all(d):
    return [(s["__key__"], s["source_ids"].tolist()) for shard in open_shard_sets(d)[0] for s in iter_shard(shard)]


TARS = ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]


@pytest.mark.parametrize("where", ["driver", "ray tasks"])
def test_a_driver_verifies_a_set_once_and_its_readers_skip_the_hash_and_the_walk(copy, full_checks, monkeypatch,
                                                                                  where):
    unverified = _read_all(copy)
    assert full_checks["full"] == TARS  # no record: each process verifies what it opens, as before
    if where == "ray tasks":
        monkeypatch.setattr(verify, "_ON_TASKS_FROM", 0)
    full_checks["full"].clear()
    shards, _ = verified_shard_sets(copy, progress=False)
    assert full_checks["full"] == ([] if where == "ray tasks" else TARS)  # the tasks' checks ran in their processes
    record = json.loads((copy / RECORD).read_text())
    assert record["manifest_sha256"] == file_sha256(copy / "manifest.json") and record["verifier"] == verify.VERIFIER
    assert {name: tuple(e[k] for k in ("bytes", "mtime_ns", "ctime_ns")) for name, e in record["shards"].items()} \
        == {name: file_identity(os.stat(copy / name)) for name in TARS}
    assert [s.vouched for s in shards] == [file_identity(os.stat(copy / name)) for name in TARS]

    full_checks["full"].clear()
    assert _read_all(copy) == unverified
    loader = ShardLoader(copy, ReaderConfig(batch_size=4, shuffle=False))
    assert sum(len(b["keys"]) for b in loader) == len(loader) * 4
    assert full_checks["full"] == [] and set(full_checks["size"]) == set(TARS)  # sizes are still checked
    verified_shard_sets(copy, progress=False)
    assert full_checks["full"] == []  # nothing left to verify


def test_a_tar_changed_since_is_verified_again_even_with_its_mtime_set_back(copy, full_checks):
    verified_shard_sets(copy, progress=False)
    tar = copy / "shard-00001.tar"
    before = os.stat(tar)
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x20  # inside the first member's data: same size
    tar.write_bytes(bytes(data))
    os.utime(tar, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as recorded; the ctime moved
    assert os.stat(tar).st_mtime_ns == before.st_mtime_ns and os.stat(tar).st_size == before.st_size
    full_checks["full"].clear()
    with pytest.warns(UserWarning, match="1 shard.*changed since they were verified"):
        shards, _ = open_shard_sets(copy)
    assert [s.vouched is None for s in shards] == [False, True, False]
    with pytest.raises(BadInputError, match="sha256 mismatch") as err:
        list(iter_shard(shards[1]))
    assert err.value.path == str(tar) and full_checks["full"] == ["shard-00001.tar"]
    with pytest.raises(BadInputError, match="sha256 mismatch"), pytest.warns(UserWarning):
        verified_shard_sets(copy, progress=False)  # the driver refuses it too, before any rank or actor starts
    assert set(json.loads((copy / RECORD).read_text())["shards"]) == {"shard-00000.tar", "shard-00002.tar"}


def test_a_record_that_comes_with_a_set_vouches_for_nothing(copy, tmp_path, full_checks):
    # A crafted shard (a link member; index and manifest hashes redone to match) and a record that
    # vouches for it as it is where it was made: copied here, as a set is received, mtimes kept.
    craft_shard(copy, 0, lambda entries: entries[:2] + [(_symlink(), b"")] + entries[2:])
    forged = {"verifier": verify.VERIFIER, "manifest_sha256": file_sha256(copy / "manifest.json"),
              "shards": {name: dict(zip(("bytes", "mtime_ns", "ctime_ns"), file_identity(os.stat(copy / name))))
                         for name in TARS}}
    (copy / RECORD).write_text(json.dumps(forged))
    received = tmp_path / "received"
    shutil.copytree(copy, received)
    with pytest.warns(UserWarning, match="3 shard.*changed since"):
        shards, _ = open_shard_sets(received)
    assert all(s.vouched is None for s in shards)
    with pytest.raises(BadInputError, match="unsupported member type") as err:
        list(iter_shard(shards[0]))
    assert err.value.path == str(received / "shard-00000.tar")


def _symlink():
    info = tarfile.TarInfo("zz.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/hostname"
    return info


def test_a_record_for_another_manifest_or_verifier_or_malformed_vouches_for_nothing(copy, full_checks):
    verified_shard_sets(copy, progress=False)
    record = json.loads((copy / RECORD).read_text())
    for changed in ({**record, "manifest_sha256": "0" * 64}, {**record, "verifier": verify.VERIFIER + 1}):
        (copy / RECORD).write_text(json.dumps(changed))
        assert all(s.vouched is None for s in open_shard_sets(copy)[0])
    for malformed in ("{", json.dumps([1]), json.dumps({**record, "shards": {"shard-00000.tar": {"bytes": "1"}}})):
        (copy / RECORD).write_text(malformed)
        with pytest.warns(UserWarning, match=f"{RECORD}.*ignoring it|{RECORD}: cannot read it"):
            assert all(s.vouched is None for s in open_shard_sets(copy)[0])


def test_a_set_whose_record_cannot_be_written_is_verified_once_for_actors_and_per_rank_otherwise(copy, full_checks,
                                                                                                 monkeypatch):
    def read_only(path, obj):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(verify, "write_json", read_only)
    with pytest.warns(UserWarning, match=f"{RECORD}: cannot write it.*training ranks verify each shard"):
        shards, _ = verified_shard_sets(copy, progress=False)
    assert not (copy / RECORD).exists() and full_checks["full"] == TARS
    full_checks["full"].clear()
    for shard in shards:  # what the driver hands its search actors
        list(iter_shard(shard))
    assert full_checks["full"] == []
    _read_all(copy)  # a training rank opens the sets itself
    assert full_checks["full"] == TARS
