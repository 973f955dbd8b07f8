"""Shard sets: atomic idempotent writing on Ray, standard tar compatibility, exact-resume reading,
and the checks that catch a damaged or crafted set."""

import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
from angel_dist.errors import BadInputError
from angel_dist.kb.table import assemble_kb, write_kb
from angel_dist.shards.format import npy_bytes, parse_npy
from angel_dist.shards.inspect import inspect_shards
from angel_dist.shards.reader import ReaderConfig, ShardLoader, iter_shard, open_shard_sets
from angel_dist.shards.tar import TarFormatError, TarStreamWriter, iter_members, member_header
from angel_dist.shards.writer import read_manifest, shard_record
from angel_dist.tokenizer import train_tokenizer

WORDS = ["acute", "chronic", "renal", "cardiac", "failure", "syndrome", "disease", "type", "neural", "tumor",
         "hepatic", "lesion", "infection", "deficiency", "hereditary", "ataxia", "fibrosis", "pulmonary"]


def synthetic_kb(path, n=600, seed=1):
    rng = np.random.default_rng(seed)
    cuis, names, defs = [], [], []
    for c in range(n):
        cui = f"C{c:07d}"
        for _ in range(int(rng.integers(1, 5))):
            cuis.append(cui)
            names.append(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 4)))))
        defs.append([" ".join(rng.choice(WORDS, size=12)) + "."] * int(rng.integers(0, 3)))
    attributes = pa.table({"cui": [f"C{c:07d}" for c in range(n)], "definitions": defs})
    table, _ = assemble_kb(pa.table({"cui": cuis, "name": names}), attributes)
    write_kb(table, path, {"format": "test"})


@pytest.fixture(scope="module")
def kb_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("kb")
    synthetic_kb(d / "kb.parquet")
    train_tokenizer(d / "kb.parquet", 600, d / "tok", progress=False)
    return d / "kb.parquet", str(d / "tok")


@pytest.fixture(scope="module")
def corpus(kb_tok, ray_local, tmp_path_factory):
    kb, tok = kb_tok
    out = tmp_path_factory.mktemp("c") / "kb"
    build_pretrain_corpus(kb, tok, out, PretrainCorpusConfig(shards=5), workers=2, progress=False)
    return out


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_manifest_counts_and_rerun_is_byte_identical(corpus, kb_tok, tmp_path):
    kb, tok = kb_tok
    manifest = read_manifest(corpus)
    names = pq.read_table(kb, columns=["names"])["names"]
    assert manifest["total"] == sum(len(n) for n in names.to_pylist())
    assert manifest["n_shards"] == 5 and sum(s["count"] for s in manifest["shards"]) == manifest["total"]
    assert manifest["tokenizer_fingerprint"] and manifest["kb_fingerprint"]
    before = _files(corpus)
    again = build_pretrain_corpus(kb, tok, corpus, PretrainCorpusConfig(shards=5), workers=2, progress=False)
    assert again["run"]["shards_written"] == 0
    fresh = tmp_path / "fresh"
    build_pretrain_corpus(kb, tok, fresh, PretrainCorpusConfig(shards=5), workers=1, progress=False)
    assert _files(fresh) == before == _files(corpus)


def test_other_settings_refuse_the_directory(corpus, kb_tok):
    kb, tok = kb_tok
    with pytest.raises(ValueError, match="another shard set"):
        build_pretrain_corpus(kb, tok, corpus, PretrainCorpusConfig(shards=5, seed=9), workers=2, progress=False)


def test_killed_writer_leaves_consistent_set_and_rerun_completes(corpus, kb_tok, tmp_path):
    kb, tok = kb_tok
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "angel_dist.cli", "corpus", "pretrain", str(kb), "--tokenizer", tok,
           "--out", str(out), "--shards", "5", "--workers", "1", "--quiet"]
    env = dict(os.environ, RAY_ADDRESS="")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("shard-*.json")) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Whatever the moment of the kill: no manifest unless everything is complete, no half tar under a final name.
    if (out / "manifest.json").exists():
        assert len(list(out.glob("shard-*.json"))) == 5
    else:
        with pytest.raises(FileNotFoundError, match="no manifest.json"):
            open_shard_sets(out)
    # Simulate the worst moments explicitly too: a half-written temporary tar and a tar without its record.
    (out / ".shard-00003.tar.tmp-dead").write_bytes(b"partial")
    (out / "shard-00004.tar").write_bytes(b"\0" * 1024)
    (out / "shard-00004.json").unlink(missing_ok=True)
    manifest = build_pretrain_corpus(kb, tok, out, PretrainCorpusConfig(shards=5), workers=2, progress=False)
    assert manifest["run"]["shards_written"] >= 1
    assert not list(out.glob(".shard-*"))
    assert _files(out) == _files(corpus)


def test_standard_readers_read_the_shards(corpus):
    import ray
    import webdataset as wds

    manifest = read_manifest(corpus)
    tars = sorted(str(p) for p in corpus.glob("shard-*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode())
    assert len(samples) == manifest["total"]
    s = samples[0]
    assert set(s["json"]) >= {"source", "prefix", "target", "cuis", "kind", "lengths"}
    assert s["ids.npy"].dtype == np.int32 and len(s["ids.npy"]) == sum(s["json"]["lengths"])
    assert ray.data.read_webdataset(tars).count() == manifest["total"]
    with tarfile.open(tars[0]) as tf:
        names = tf.getnames()
    assert len(names) == 2 * manifest["shards"][0]["count"]


def _keys(loader, n=None):
    return [tuple(b["keys"]) for b in itertools.islice(loader, n)]


@pytest.mark.parametrize("world_size", [1, 2])
def test_reader_resumes_exactly(corpus, world_size):
    config = ReaderConfig(batch_size=8, shuffle_buffer=40, bucket=True, bucket_size=16, seed=3)
    seen = []
    for rank in range(world_size):
        def make():
            return ShardLoader(corpus, config, rank=rank, world_size=world_size, num_workers=2)
        full = make()
        epoch0 = _keys(full)
        epoch1 = _keys(full)
        assert len(epoch0) == len(full) and epoch0 != epoch1
        seen += [k for b in epoch0 for k in b]
        for cut in (1, 7, len(epoch0) // 2):
            first = make()
            head = _keys(first, cut)
            state = json.loads(json.dumps(first.state_dict()))
            resumed = make()
            resumed.load_state_dict(state)
            assert head + _keys(resumed) == epoch0
            assert _keys(resumed) == epoch1
    total = read_manifest(corpus)["total"]
    assert len(seen) == len(set(seen)) > total - 8 * world_size


def _global_keys(loaders, n=None):
    """Keys in sequence order of ranks stepping together: step j of rank 0, rank 1, ..."""
    steps = zip(*[itertools.islice(iter(loader), n) for loader in loaders])
    return [k for step in steps for b in step for k in b["keys"]]


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_reader_resumes_on_another_world_size(corpus, before, after):
    config = ReaderConfig(batch_size=4, shuffle_buffer=64, bucket=True, bucket_size=16, seed=5)
    total = read_manifest(corpus)["total"]
    uninterrupted = _global_keys([ShardLoader(corpus, config, world_size=1)])
    old = [ShardLoader(corpus, config, rank=r, world_size=before, num_workers=2) for r in range(before)]
    head = _global_keys(old, 10)
    states = [loader.state_dict() for loader in old]
    assert len({json.dumps(s) for s in states}) == 1 and states[0]["consumed"] == 10 * 4 * before
    new = [ShardLoader(corpus, config, rank=r, world_size=after, num_workers=1) for r in range(after)]
    for loader in new:
        loader.load_state_dict(states[0])
    rest = _global_keys(new)
    # One sample sequence whatever the layout: no sample skipped or seen twice, only the tail differs.
    assert head + rest == uninterrupted[:len(head) + len(rest)]
    assert len(head + rest) > total - 4 * max(before, after)


def test_reader_state_over_another_sequence_is_refused(corpus):
    a = ShardLoader(corpus, ReaderConfig(batch_size=8, seed=1))
    with pytest.raises(ValueError, match="seed"):
        ShardLoader(corpus, ReaderConfig(batch_size=8, seed=2)).load_state_dict(a.state_dict())


def test_reader_batches_are_padded_with_target_mask(corpus):
    batch = next(iter(ShardLoader(corpus, ReaderConfig(batch_size=4, shuffle=False), pad_id=1, decoder_start_id=2)))
    assert batch["source_ids"].shape == batch["source_mask"].shape
    assert (batch["source_ids"][~batch["source_mask"]] == 1).all()
    assert (batch["decoder_ids"][:, 0] == 2).all()
    for i in range(4):
        n_target = int(batch["target_mask"][i].sum())
        assert n_target >= 2  # at least one name token and eos
        last = int(batch["decoder_mask"][i].sum()) - 1
        assert batch["target_mask"][i, last] and not batch["target_mask"][i, : last + 1 - n_target].any()


def test_reader_refuses_another_tokenizer(corpus):
    theirs = read_manifest(corpus)["tokenizer_fingerprint"]
    with pytest.raises(ValueError, match=f"{theirs}.*mine-123|mine-123.*{theirs}"):
        ShardLoader(corpus, tokenizer_fingerprint="mine-123")


def _corrupt_copy(corpus, tmp_path, damage=lambda b: b):
    out = tmp_path / "bad"
    shutil.copytree(corpus, out)
    tar = out / "shard-00000.tar"
    tar.write_bytes(damage(tar.read_bytes()))
    return out, tar


def rehash(out, counts=False):
    """Make a set's manifest vouch for its files as they are now, as a crafted set would: sizes
    and hashes, and with `counts` the shards' counts and the total, from their indexes."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    for s in manifest["shards"]:
        tar, index = (out / s["name"]).read_bytes(), (out / s["index"]).read_bytes()
        s.update(bytes=len(tar), sha256=hashlib.sha256(tar).hexdigest(), index_bytes=len(index),
                 index_sha256=hashlib.sha256(index).hexdigest())
        if counts:
            s["count"] = len(np.load(io.BytesIO(index)))
    if counts:
        manifest["total"] = sum(s["count"] for s in manifest["shards"])
    path.write_text(json.dumps(manifest))


def tar_entries(data):
    """The members of a tar as (TarInfo, bytes), read with tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m, tf.extractfile(m).read() if m.isreg() else b"") for m in tf]


def write_entries(entries):
    """A tar of (TarInfo, bytes) entries and the byte offset of each entry's header."""
    out, offsets = bytearray(), []
    for info, data in entries:
        offsets.append(len(out))
        info.size = len(data)
        out += info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + data + b"\0" * (-len(data) % 512)
    return bytes(out + b"\0" * 1024), offsets


def _regular(name, data=b""):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def craft_shard(out, index, edit):
    """Rewrite shard `index` of `out` from `edit(entries)`, index its original samples where they
    now start (at their key's first member; new keys stay out of the index) and rehash the manifest."""
    tar = out / f"shard-{index:05d}.tar"
    entries = tar_entries(tar.read_bytes())
    keys = list(dict.fromkeys(info.name.split(".")[0] for info, _ in entries))
    lengths = dict(zip(keys, np.load(out / f"shard-{index:05d}.idx.npy")[:, 1]))
    entries = edit(entries)
    data, offsets = write_entries(entries)
    tar.write_bytes(data)
    starts, seen = [], set()
    for (info, _), offset in zip(entries, offsets):
        key = info.name.split(".")[0]
        if info.isreg() and key not in seen and key in lengths:
            seen.add(key)
            starts.append((offset, lengths[key]))
    np.save(out / f"shard-{index:05d}.idx.npy", np.array(starts, dtype=np.int64).reshape(-1, 2))
    rehash(out)


@pytest.mark.parametrize("vouched", [False, True])
@pytest.mark.parametrize("damage", ["duplicated", "short"])
def test_damaged_index_is_refused(corpus, tmp_path, damage, vouched):
    out, _ = _corrupt_copy(corpus, tmp_path)
    index = out / "shard-00000.idx.npy"
    rows = np.load(index)
    # What once made the reader yield one sample three times and two never; a short index raised IndexError.
    rows = np.concatenate([rows[:1], rows[:1], rows[:1], rows[3:]]) if damage == "duplicated" else rows[:-1]
    np.save(index, rows)
    if vouched:
        rehash(out)
    expected = {False: "differs from its manifest entry", True: {"duplicated": "increase strictly",
                                                                 "short": r"rows \[\d+, 2\]"}[damage]}[vouched]
    shards, _ = open_shard_sets(out)
    with pytest.raises(BadInputError, match=expected) as err:
        list(iter_shard(shards[0]))
    assert err.value.path == str(index)
    skipping = ShardLoader(out, ReaderConfig(batch_size=8, shuffle=False, on_bad_input="skip"))
    n = sum(len(b["keys"]) for b in skipping)
    assert skipping.skipped >= shards[0].count - 8 and n + skipping.skipped == len(skipping) * 8


@pytest.mark.parametrize("field, name", [("name", "../shard-00000.tar"), ("name", "/etc/hostname"),
                                         ("index", "sub/shard-00000.idx.npy"), ("index", ".."), ("name", ""),
                                         ("index", "shard-00001.idx.npy")])
def test_manifest_names_stay_in_the_set_directory(corpus, tmp_path, field, name):
    out, _ = _corrupt_copy(corpus, tmp_path)
    (tmp_path / "shard-00000.tar").write_bytes((out / "shard-00000.tar").read_bytes())  # a readable ../ target
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0][field] = name
    (out / "manifest.json").write_text(json.dumps(manifest))
    problem = "listed twice" if name.startswith("shard-") else "expected a plain file name"
    for open_set in (open_shard_sets, inspect_shards, lambda d: ShardLoader(d, ReaderConfig(on_bad_input="skip"))):
        with pytest.raises(BadInputError, match=rf"shards\[\d\]\.{field} .*{problem}") as err:
            open_set(out)
        assert err.value.path == str(out / "manifest.json")


@pytest.mark.parametrize("missing", ["shard-00001.tar", "shard-00003.idx.npy"])
def test_missing_listed_file_is_named_when_the_set_is_opened(corpus, tmp_path, missing):
    out, _ = _corrupt_copy(corpus, tmp_path)
    (out / missing).unlink()
    for open_set in (open_shard_sets, inspect_shards, lambda d: ShardLoader(d, ReaderConfig(on_bad_input="skip"))):
        with pytest.raises(BadInputError, match="listed in .*manifest.json .* but missing") as err:
            open_set(out)
        assert err.value.path == str(out / missing)


def test_a_set_given_twice_is_refused(corpus):
    with pytest.raises(ValueError, match="given more than once"):
        open_shard_sets([corpus, corpus.parent / ".." / corpus.parent.name / corpus.name])


def test_old_schema_is_refused_with_how_to_rebuild(corpus, tmp_path):
    out, _ = _corrupt_copy(corpus, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInputError, match="version 1, expected 2.*no index checksum.*--overwrite"):
        open_shard_sets(out)


def _link(name, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/hostname"
    return info, b""


@pytest.mark.parametrize("extra, problem", [
    (lambda: _link("zz.json", tarfile.SYMTYPE), r"unsupported member type b'2'"),
    (lambda: _link("zz.json", tarfile.CHRTYPE), r"unsupported member type b'3'"),
    (lambda: _link("zz", tarfile.DIRTYPE), r"unsupported member type b'5'"),
    (lambda: _regular("zz.json", b"{}"), r"sample 'zz' has members \['json'\]"),
], ids=["symlink", "device", "directory", "lone-member"])
def test_every_member_is_walked_when_a_shard_is_verified(corpus, tmp_path, extra, problem):
    # An unexpected member between two indexed samples, the index and hashes crafted to match.
    out, tar = _corrupt_copy(corpus, tmp_path)
    craft_shard(out, 0, lambda entries: entries[:4] + [extra()] + entries[4:])
    with pytest.raises(BadInputError, match=problem) as err:
        list(iter_shard(open_shard_sets(out)[0][0]))
    assert err.value.path == str(tar)


def test_shard_said_to_be_empty_is_checked_though_no_position_reads_it(corpus, tmp_path):
    out, tar = _corrupt_copy(corpus, tmp_path)
    np.save(out / "shard-00000.idx.npy", np.zeros((0, 2), np.int64))
    rehash(out, counts=True)  # the manifest agrees: shard 0 holds nothing, though its tar holds samples
    with pytest.raises(BadInputError, match="the tar holds \\d+ samples, its index 0") as err:
        list(ShardLoader(out, ReaderConfig(batch_size=8)))
    assert err.value.path == str(tar)


def test_sample_the_index_does_not_cover_is_caught(corpus, tmp_path):
    out, tar = _corrupt_copy(corpus, tmp_path)
    craft_shard(out, 0, lambda entries: entries[:4] + [_regular("zz.json", entries[0][1]),
                                                       _regular("zz.ids.npy", entries[1][1])] + entries[4:])
    with pytest.raises(BadInputError, match=r"tar holds \d+ samples, its index \d+; they first differ at sample 2"):
        list(iter_shard(open_shard_sets(out)[0][0]))


def _replace(field, payload):
    """Replace member `field` of the shard's second sample."""
    def edit(entries):
        info, _ = entries[2 + (field == "ids.npy")]
        return entries[:2] + [(info, payload) if e[0] is info else e for e in entries[2:]]
    return edit


def _npy(header: str) -> bytes:
    text = header.encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize("field, payload, problem", [
    ("json", b"[1, 2]", "expected a JSON object, got list"),
    ("json", b'{"kind": "kb", "lengths": [1, 1, 1], "cuis": "C1"}', "field 'source' is missing"),
    ("json", b'{"source": "\xff"}', "not UTF-8 JSON"),
    ("json", b"[" * 100_000, "not UTF-8 JSON"),
    ("ids.npy", _npy("{'descr': '<i4', 'fortran_order': False, 'shape': __import__('os').getpid()}"),
     "not a literal"),
    ("ids.npy", _npy("[1, 2]"), "not a dict"),
    ("ids.npy", _npy("{'descr': '<f8', 'fortran_order': False, 'shape': (0,)}"), "expected a 1-D <i4 array"),
    ("ids.npy", _npy("{'descr': '|O', 'fortran_order': False, 'shape': (0,)}"), "unsupported .npy dtype"),
], ids=["list", "missing-field", "not-utf8", "deep", "call", "not-dict", "float", "object"])
def test_decode_errors_name_shard_and_member_and_are_skipped(corpus, tmp_path, field, payload, problem):
    out, tar = _corrupt_copy(corpus, tmp_path)
    craft_shard(out, 0, _replace(field, payload))
    key = tar_entries(tar.read_bytes())[2][0].name.split(".")[0]
    with pytest.raises(BadInputError, match=problem) as err:
        list(iter_shard(open_shard_sets(out)[0][0]))
    assert err.value.path == str(tar) and f"{key}.{field}" in str(err.value)
    skipping = ShardLoader(out, ReaderConfig(batch_size=8, shuffle=False, on_bad_input="skip"))
    n = sum(len(b["keys"]) for b in skipping)
    assert skipping.skipped > 0 and n + skipping.skipped == len(skipping) * 8


def test_bad_input_from_a_dataloader_worker_stays_a_bad_input_error(corpus, tmp_path):
    # DataLoader re-raises what a worker raises as RuntimeError when the exception takes several arguments.
    out, tar = _corrupt_copy(corpus, tmp_path)
    craft_shard(out, 0, _replace("json", b"[1, 2]"))
    with pytest.raises(BadInputError, match="expected a JSON object") as err:
        list(ShardLoader(out, ReaderConfig(batch_size=8, shuffle=False), num_workers=1))
    assert err.value.path == str(tar)


def test_shard_record_vouches_only_for_what_it_recorded(corpus, tmp_path):
    out, _ = _corrupt_copy(corpus, tmp_path)
    config_hash = read_manifest(out)["config_hash"]
    assert shard_record(out, 1, config_hash)["index_sha256"] == read_manifest(out)["shards"][1]["index_sha256"]
    index = out / "shard-00001.idx.npy"
    data = bytearray(index.read_bytes())
    data[-1] ^= 1  # same size, another offset
    index.write_bytes(bytes(data))
    record = out / "shard-00002.json"
    record.write_text(record.read_text()[:40])  # torn by a crash
    assert shard_record(out, 1, config_hash) is None and shard_record(out, 2, config_hash) is None
    assert shard_record(out, 3, config_hash) is not None


def test_truncated_shard_names_shard_and_member(corpus, tmp_path):
    out, tar = _corrupt_copy(corpus, tmp_path, lambda b: b[: len(b) // 2 + 100])
    loader = ShardLoader(out, ReaderConfig(batch_size=8, shuffle=False))
    with pytest.raises(BadInputError) as err:
        list(loader)
    assert str(tar) in str(err.value) and "member" in str(err.value) and "truncated" in str(err.value)
    skipping = ShardLoader(out, ReaderConfig(batch_size=8, shuffle=False, on_bad_input="skip"))
    n = sum(len(b["keys"]) for b in skipping)
    assert skipping.skipped > 0
    assert n + skipping.skipped == len(skipping) * 8  # every position of the epoch, read or counted


def test_flipped_byte_is_caught_by_the_manifest_hash(corpus, tmp_path):
    def flip(b):
        b = bytearray(b)
        b[700] ^= 0x20  # inside the first member's data
        return bytes(b)
    out, tar = _corrupt_copy(corpus, tmp_path, flip)
    with pytest.raises(BadInputError, match="sha256|checksum"):
        list(ShardLoader(out, ReaderConfig(batch_size=8, shuffle=False)))


@pytest.mark.parametrize("name", ["../evil.json", "/etc/evil.json", "a/../../evil.json"])
def test_unsafe_member_paths_are_rejected(name):
    # Built with tarfile, as a hostile archive would be.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.size = 2
        tf.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(TarFormatError, match=r"absolute or contains '\.\.'"):
        list(iter_members(buf.getvalue(), "hostile.tar"))
    with pytest.raises(ValueError):
        member_header(name, 2)


def test_tar_round_trip_with_tarfile_and_npy():
    buf = io.BytesIO()
    w = TarStreamWriter(buf)
    payloads = {"k1.json": b'{"a":1}', "k1.ids.npy": npy_bytes(np.arange(5)), "k2.json": b"x" * 1000}
    for name, data in payloads.items():
        w.add(name, data)
    w.close()
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert {m.name: tf.extractfile(m).read() for m in tf} == payloads
    ours = {m.name: data[m.offset:m.offset + m.size] for m in iter_members(data, "t.tar")}
    assert ours == payloads
    assert parse_npy(payloads["k1.ids.npy"]).tolist() == [0, 1, 2, 3, 4]
    ref = io.BytesIO()
    np.save(ref, np.arange(5, dtype="<i4"))
    assert ref.getvalue() == payloads["k1.ids.npy"]


def test_cli_inspect(corpus, capsys):
    from angel_dist.cli import main

    assert main(["corpus", "inspect", str(corpus), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{read_manifest(corpus)['total']} samples in 5 shards" in out
    assert out.count("START") >= 2 and out.count("  target: ") == 2


def test_mention_corpus_cli_train_and_eval(kb_tok, ray_local, tmp_path, capsys):
    from angel_dist.cli import main

    kb, tok = kb_tok
    rows = pq.read_table(kb, columns=["cui", "names"]).to_pylist()[:40]
    lines = []
    for d, row in enumerate(rows):
        title = f"A study of {row['names'][0]}."
        lines += [f"{d}|t|{title}", f"{d}|a|Nothing else here.",
                  f"{d}\t11\t{11 + len(row['names'][0])}\t{row['names'][0]}\tDisease\t{row['cui']}", ""]
    lines += ["99|t|Unlinked thing.", "99\t0\t8\tUnlinked\tDisease\t-1", ""]
    pubtator = tmp_path / "docs.txt"
    pubtator.write_text("\n".join(lines) + "\n")
    # The training set from the same documents in two files (train + dev trained on together).
    (tmp_path / "a.txt").write_text("\n".join(lines[:80]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[80:]) + "\n")
    common = ["corpus", "mentions", "--kb", str(kb), "--tokenizer", tok, "--quiet"]
    assert main(common + ["--pubtator", str(pubtator), "--out", str(tmp_path / "eval"), "--eval-only"]) == 0
    assert main(common + ["--pubtator", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out",
                          str(tmp_path / "train"), "--syn-k", "2"]) == 0
    evaluation, train = read_manifest(tmp_path / "eval"), read_manifest(tmp_path / "train")
    assert evaluation["total"] == 40 and evaluation["counts"]["unlinked_dropped"] == 1
    assert train["total"] == sum(min(2, len(r["names"])) for r in rows)
    assert train["config"]["pubtator"] == ["a.txt", "b.txt"] and train["counts"]["documents"] == 41
    batches = list(ShardLoader(tmp_path / "eval", ReaderConfig(batch_size=8, shuffle=False)))
    assert sum(len(b["keys"]) for b in batches) == 40 and all(t == "" for b in batches for t in b["targets"])
    assert not any(b["target_mask"].any() for b in batches)
