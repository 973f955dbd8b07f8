"""Fuzzing the shard reader: real small shard sets (examples and pairs) with their tar bytes,
index and manifest mutated (flipped, cut, inserted and duplicated bytes; index rows duplicated,
dropped, reordered, retyped; tar members replaced, renamed, reordered, or joined by links,
devices and stray samples; manifest fields removed, retyped or pointed elsewhere), sometimes
with the index rebuilt and the manifest's hashes redone to vouch for the damage, as a crafted
set would; half of them received as a set is (copied, mtimes kept) with a verification record
(verified.json) that vouched for its files as they were where they were made. The clean sets
carry a record of their own, which no copy may inherit. Read through open_shard_sets + iter_shard, ShardLoader in error and skip modes and
inspect_shards, every outcome must be one of
  - the samples the files really hold: every listed shard read exactly as Python's tarfile
    reads its tar (same samples, in order, none dropped or repeated), which for files left
    intact are the clean set's samples,
  - a BadInputError naming a file of the set (manifest, tar or index),
  - in skip mode, positions each either that same sample or counted as skipped,
never another exception. The number of examples comes from the hypothesis profile
(HYPOTHESIS_PROFILE=bench, as bench/fuzz.py runs it: 10,000).
"""

import hashlib
import io
import json
import os
from collections import Counter, defaultdict
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, strategies as st

from angel_dist.corpus.build import PretrainCorpusConfig, build_pretrain_corpus
from angel_dist.digest import file_sha256
from angel_dist.errors import BadInputError
from angel_dist.pairs.shard_set import Pair, write_pair_set
from angel_dist.shards.format import ID_FIELDS
from angel_dist.shards.inspect import inspect_shards
from angel_dist.shards.reader import ReaderConfig, ShardLoader, iter_shard, open_shard_sets
from angel_dist.shards.verify import RECORD, VERIFIER, file_identity, verified_shard_sets
from angel_dist.tokenizer import train_tokenizer
from conftest import report_fuzz_outcomes
from test_shards import rehash, synthetic_kb, tar_entries, write_entries

MANIFEST = "manifest.json"
OUTCOMES: dict[str, Counter] = defaultdict(Counter)  # reader -> outcome -> inputs, for bench/fuzz.py


@pytest.fixture(scope="module")
def sets(ray_local, tmp_path_factory):
    """Two small sets, 2 shards each: KB-guided examples as the corpus stage writes them, and
    pairs built from them as mining writes them."""
    d = tmp_path_factory.mktemp("fuzz")
    synthetic_kb(d / "kb.parquet", n=8)
    train_tokenizer(d / "kb.parquet", 600, d / "tok", progress=False)
    build_pretrain_corpus(d / "kb.parquet", str(d / "tok"), d / "examples", PretrainCorpusConfig(shards=2),
                          workers=1, progress=False)
    shards, _ = open_shard_sets(d / "examples")
    samples = [s for shard in shards for s in iter_shard(shard)]
    pairs = [Pair(key=f"p{i:03d}", source_key=a["__key__"], prompt=a["source"], prefix=a["prefix"],
                  chosen=a["target"], rejected=b["target"], cuis=a["cuis"], source_ids=a["source_ids"],
                  prefix_ids=a["prefix_ids"], chosen_ids=a["target_ids"], rejected_ids=b["target_ids"],
                  ref_chosen_logp=-0.5 * i, ref_rejected_logp=-2.0, chosen_rank=1, rejected_rank=2)
             for i, (a, b) in enumerate(zip(samples, samples[1:]))]
    write_pair_set(d / "pairs", pairs, 2, {"round": 0}, {"tokenizer_fingerprint": "t", "kb_fingerprint": "k"})
    out = {}
    for name in ("examples", "pairs"):
        views = [_tar_view(p.read_bytes()) for p in sorted((d / name).glob("shard-*.tar"))]
        assert all(len(v) >= 3 and None not in v for v in views)  # something to reorder, drop and repeat
        verified_shard_sets(d / name, progress=False)
        assert (d / name / RECORD).exists()
        out[name] = d / name
    return out


def _ours(sample: dict) -> tuple:
    """A sample as the reader gives it, comparable: key, JSON fields (as text: NaN-safe), ids."""
    record = {k: v for k, v in sample.items() if not k.endswith("_ids") and k != "__key__"}
    ids = [int(i) for name in ID_FIELDS[sample["kind"]] for i in sample[f"{name}_ids"]]
    return sample["__key__"], json.dumps(record, sort_keys=True), ids


def _source(sample: tuple) -> tuple:
    key, record, ids = sample
    return key, ids[:json.loads(record)["lengths"][0]]


def _tar_view(data: bytes) -> list[tuple | None] | None:
    """The samples of a tar as Python's tarfile, json and numpy read them (regular members
    grouped by key, WebDataset's rule), comparable as `_ours`; None for a sample they cannot
    decode, and for the whole tar when tarfile cannot list it."""
    try:
        entries = tar_entries(data)
    except Exception:  # whatever the reason: there is nothing a reader may return for this tar
        return None
    groups: dict[str, dict] = {}
    for info, payload in entries:
        if info.isreg():
            base = info.name.rsplit("/", 1)[-1]
            cut = len(info.name) - len(base) + base.find(".") if "." in base else len(info.name)
            groups.setdefault(info.name[:cut], {})[info.name[cut + 1:]] = payload
    view = []
    for key, fields in groups.items():
        try:
            record = json.loads(fields["json"].decode("utf-8"))
            ids = np.load(io.BytesIO(fields["ids.npy"]), allow_pickle=False)
            view.append((key, json.dumps(record, sort_keys=True), ids.tolist()))
        except Exception:
            view.append(None)
    return view


class Expected:
    """What a successful read of each listed shard must give, from the files as they are. First
    it checks that the manifest vouches for them (sizes and sha256): a read that succeeded on a
    file the manifest does not vouch for has missed a check."""

    def __init__(self, shards):
        self.shards, self.views = shards, {}

    def __getitem__(self, i: int) -> list[tuple | None]:
        if i not in self.views:
            shard = self.shards[i]
            tar, index = Path(shard.path).read_bytes(), Path(shard.index).read_bytes()
            assert (shard.bytes, shard.sha256) == (len(tar), hashlib.sha256(tar).hexdigest()), shard
            assert (shard.index_bytes, shard.index_sha256) == (len(index), hashlib.sha256(index).hexdigest()), shard
            self.views[i] = _tar_view(tar)
            assert self.views[i] is not None, f"{shard.path} was read, but tarfile cannot list it"
        return self.views[i]


# ---- mutations -------------------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**13), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["../shard-00000.tar", "/etc/hostname", "shard-00001.tar", "shard-00000.idx.npy",
                     "sub/shard-00000.tar", ".", "..", "", MANIFEST, "plan.json", "shard-00000.json",
                     "0" * 64, "examples", "pairs"]),
    st.lists(st.integers(-2, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))

BAD_JSON = st.sampled_from([b"[1, 2]", b"3", b'"x"', b"null", b"{", b'{"kind": "kb"}', b"\xff\xfe{}",
                            b"[" * 50_000, b'{"kind": ["kb"], "lengths": [0, 0, 0]}', b""])
BAD_NPY_HEADERS = st.sampled_from([
    "{'descr': '<i8', 'fortran_order': False, 'shape': (%d,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (%d,), }",
    "{'descr': '<i4', 'fortran_order': True, 'shape': (%d,), }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (%d, 1), }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': __import__('os').getpid(), } # %d",
    "[%d]", "{'descr': '<i4', 'shape': (%d,)}", "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (%d,)}",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (%d,), 'x': 1}", "((((((((((%d"])


def _npy(header: str, body: bytes) -> bytes:
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + body


def _bytes_mutation(data: st.DataObject, raw: bytes) -> bytes:
    n = len(raw)
    how = data.draw(st.sampled_from(["flip", "flip", "flip", "cut", "delete", "insert", "duplicate", "zero",
                                     "append"]))
    pos = data.draw(st.integers(0, max(n - 1, 0)))
    if how == "flip":
        out = bytearray(raw)
        for p, mask in data.draw(st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(1, 255)),
                                          min_size=1, max_size=4)):
            if n:
                out[p] ^= mask
        return bytes(out)
    if how == "cut":
        return raw[:pos]
    if how == "delete":
        return raw[:pos] + raw[pos + data.draw(st.integers(1, 1024)):]
    if how == "insert":
        return raw[:pos] + data.draw(st.binary(min_size=1, max_size=600)) + raw[pos:]
    if how == "duplicate":
        return raw[:pos] + raw[pos:pos + data.draw(st.integers(1, 2048))] + raw[pos:]
    if how == "zero":
        block = pos - pos % 512
        return raw[:block] + b"\0" * 512 + raw[block + 512:]
    return raw + data.draw(st.binary(min_size=1, max_size=1024))


def _index_mutation(data: st.DataObject, raw: bytes) -> bytes:
    rows = np.load(io.BytesIO(raw))
    n = len(rows)
    if rows.ndim != 2 or rows.shape[1] != 2 or not n:  # damaged before: bytes only
        return _bytes_mutation(data, raw)
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1))
    how = data.draw(st.sampled_from(["dup", "drop", "swap", "append", "set", "reverse", "dtype", "flat",
                                     "column", "fortran", "empty"]))
    if how == "dup":
        rows[j] = rows[i]
    elif how == "drop":
        rows = np.delete(rows, i, axis=0)
    elif how == "swap":
        rows[[i, j]] = rows[[j, i]]
    elif how == "append":
        rows = np.concatenate([rows, rows[i:i + 1]])
    elif how == "set":
        near = int(rows[i, 0]) + data.draw(st.sampled_from([-1024, -512, -1, 1, 512, 1024]))
        rows[i, data.draw(st.integers(0, 1))] = data.draw(st.one_of(st.just(near), st.integers(-2**40, 2**40)))
    elif how == "reverse":
        rows = rows[::-1]
    elif how == "dtype":
        rows = rows.astype(data.draw(st.sampled_from(["<i4", ">i8", "<u8", "<f8"])))
    elif how == "flat":
        rows = rows.reshape(-1)
    elif how == "column":
        rows = np.concatenate([rows, rows[:, :1]], axis=1)
    elif how == "fortran":
        rows = np.asfortranarray(rows)
    else:
        rows = rows[:0]
    out = io.BytesIO()
    np.save(out, rows)
    return out.getvalue()


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/hostname"
    return info, b""


STRUCTURE = ["drop", "copy", "swap", "rename", "special", "sample", "field", "type", "header", "move-sample",
             "drop-sample"]
CONTENT = ["json", "npy", "bytes"]


def _tar_mutation(data: st.DataObject, raw: bytes, ops: list[str] = STRUCTURE + CONTENT) -> bytes:
    """One change to a tar's members (`ops`: which kinds), written back as a valid ustar archive."""
    entries = tar_entries(raw)
    n = len(entries)
    if not n:
        return _bytes_mutation(data, raw)
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n))
    info, payload = entries[i]
    how = data.draw(st.sampled_from(ops))
    key = info.name.split(".")[0]
    if how in ("move-sample", "drop-sample"):  # all members of one key, as a whole
        moved = [e for e in entries if e[0].name.split(".")[0] == key]
        entries = [e for e in entries if e[0].name.split(".")[0] != key]
        if how == "move-sample":
            starts = [k for k, e in enumerate(entries) if k == 0 or e[0].name.split(".")[0] !=
                      entries[k - 1][0].name.split(".")[0]] + [len(entries)]
            at = data.draw(st.sampled_from(starts))
            entries[at:at] = moved
    elif how == "drop":
        del entries[i]
    elif how == "copy":
        entries.insert(j, (info, payload))
    elif how == "swap":
        entries[i], entries[min(j, n - 1)] = entries[min(j, n - 1)], entries[i]
    elif how == "rename":
        other = entries[min(j, n - 1)][0].name
        new = data.draw(st.sampled_from([other, other.split(".")[0] + "." + info.name.split(".", 1)[-1],
                                         "../" + info.name, "/" + info.name, "a/" + info.name,
                                         info.name + "/", info.name.replace(".", "-", 1), "k\udcff.json",
                                         info.name.upper(), "x" * 95 + ".json"]))
        entries[i] = (_renamed(info, new), payload)
    elif how == "json":
        entries[i] = (info, data.draw(st.one_of(BAD_JSON, _changed_json(payload))))
    elif how == "npy":
        count = (len(payload) - 64) // 4 if len(payload) >= 64 else 0
        header = data.draw(BAD_NPY_HEADERS) % count
        body = payload[64:] if payload.startswith(b"\x93NUMPY") else payload
        entries[i] = (info, _npy(header, data.draw(st.sampled_from([body, body[:-4], body + b"\0" * 4]))))
    elif how == "bytes":
        entries[i] = (info, _bytes_mutation(data, payload))
    elif how == "special":
        kind = data.draw(st.sampled_from([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE,
                                          tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"x", b"L"]))
        entries.insert(j, _special(data.draw(st.sampled_from(["zz.json", info.name, "zz"])), kind))
    elif how == "sample":  # a whole extra sample: the first one's members under a new or a taken key
        key = data.draw(st.sampled_from(["zz-extra", info.name.split(".")[0]]))
        json_member = next((e for e in entries if e[0].name.endswith(".json")), entries[i])
        npy_member = next((e for e in entries if e[0].name.endswith(".ids.npy")), entries[i])
        entries[j:j] = [(_renamed(json_member[0], key + ".json"), json_member[1]),
                        (_renamed(npy_member[0], key + ".ids.npy"), npy_member[1])]
    elif how == "field":
        entries.insert(j, (_renamed(info, info.name.split(".")[0] + ".txt"), b"extra"))
    elif how == "type":
        entries[i] = (_retyped(info, data.draw(st.sampled_from([tarfile.AREGTYPE, tarfile.CONTTYPE]))), payload)
    else:  # header fields that readers ignore, as any tar tool may set them
        header = _renamed(info, info.name)
        header.mode, header.mtime, header.uname = 0o644, data.draw(st.integers(0, 2**33 - 1)), "someone"
        entries[i] = (header, payload)
    return write_entries(entries)[0]


def _renamed(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    new = tarfile.TarInfo(name)
    new.type, new.mode, new.mtime = info.type, info.mode, info.mtime
    return new


def _retyped(info: tarfile.TarInfo, kind: bytes) -> tarfile.TarInfo:
    new = _renamed(info, info.name)
    new.type = kind
    return new


@st.composite
def _changed_json(draw, payload: bytes):
    """The record with one field removed, added or given another value (a type it may not have)."""
    try:
        record = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(record, dict) or not record:
        return payload
    field = draw(st.sampled_from(sorted(record) + ["extra"]))
    if draw(st.booleans()):
        record.pop(field, None)
    else:
        record[field] = draw(JSON_VALUES)
    return json.dumps(record).encode()


def _manifest_mutation(data: st.DataObject, raw: bytes) -> bytes:
    try:
        manifest = json.loads(raw)
        shards = manifest["shards"]
        assert isinstance(shards, list) and shards and all(isinstance(s, dict) for s in shards)
    except Exception:  # damaged before: bytes only
        return _bytes_mutation(data, raw)
    i = data.draw(st.integers(0, len(shards) - 1))
    how = data.draw(st.sampled_from(["drop-field", "set-field", "drop-entry-field", "set-entry-field",
                                     "copy-entry", "drop-entry", "swap-entries", "not-an-object"]))
    if how == "drop-field":
        manifest.pop(data.draw(st.sampled_from(sorted(manifest))))
    elif how == "set-field":
        manifest[data.draw(st.sampled_from(sorted(manifest) + ["extra"]))] = data.draw(JSON_VALUES)
    elif how == "drop-entry-field":
        shards[i].pop(data.draw(st.sampled_from(sorted(shards[i]))))
    elif how == "set-entry-field":
        shards[i][data.draw(st.sampled_from(sorted(shards[i])))] = data.draw(JSON_VALUES)
    elif how == "copy-entry":
        shards.insert(data.draw(st.integers(0, len(shards))), dict(shards[i]))
    elif how == "drop-entry":
        del shards[i]
        if data.draw(st.booleans()):  # consistently: counts follow
            manifest["n_shards"] = len(shards)
            manifest["total"] = sum(s.get("count", 0) for s in shards if isinstance(s.get("count"), int))
    elif how == "swap-entries":
        shards.reverse()
    else:
        manifest = shards
    return json.dumps(manifest).encode()


def _rebuilt_index(index: bytes, tar: bytes) -> bytes | None:
    """An index rebuilt for a changed tar: each key's first member, in tar order, with the source
    lengths of the old index by position."""
    try:
        starts, seen = [], set()
        for info, _ in tar_entries(tar):
            key = info.name.split(".")[0]
            if info.isreg() and key not in seen:
                seen.add(key)
                starts.append(info.offset)
        lengths = np.load(io.BytesIO(index))[:, 1]
        rows = np.array([(s, lengths[k] if k < len(lengths) else 0) for k, s in enumerate(starts)], dtype=np.int64)
        out = io.BytesIO()
        np.save(out, rows.reshape(-1, 2))
        return out.getvalue()
    except Exception:  # a tar tarfile cannot list: keep the index
        return None


def mutate(data: st.DataObject, d: Path) -> None:
    """One of four scenarios: damage (one to three mutations of any files, most often the tars)
    left as it is, or with the manifest's hashes redone to vouch for it; or a crafted shard, one
    change to the structure or to the content of a tar, with its index rebuilt and the
    manifest's hashes and counts redone to match, as a forger would."""
    names = sorted(p.name for p in d.iterdir() if p.name.endswith((".tar", ".idx.npy")) or p.name == MANIFEST)
    tars = [n for n in names if n.endswith(".tar")]
    scenario = data.draw(st.sampled_from(["damage", "vouched damage", "crafted structure", "crafted content"]))
    _note(scenario)
    if scenario.startswith("crafted"):
        tar = d / data.draw(st.sampled_from(tars))
        ops = STRUCTURE if scenario.endswith("structure") else CONTENT
        tar.write_bytes(_tar_mutation(data, tar.read_bytes(), ops))
        index = tar.with_name(tar.name.replace(".tar", ".idx.npy"))
        index.write_bytes(_rebuilt_index(index.read_bytes(), tar.read_bytes()) or index.read_bytes())
        _vouch(d, counts=True)
        return
    for _ in range(data.draw(st.sampled_from([1, 1, 2, 3]))):
        path = d / data.draw(st.sampled_from(names + tars))
        if not path.exists():
            continue
        raw = path.read_bytes()
        semantic = data.draw(st.booleans())
        if data.draw(st.integers(0, 19)) == 0 and path.name != MANIFEST:
            path.unlink()
        elif path.name == MANIFEST:
            path.write_bytes(_manifest_mutation(data, raw) if semantic else _bytes_mutation(data, raw))
        elif semantic and path.name.endswith(".idx.npy") and _loads(np.load, raw):
            path.write_bytes(_index_mutation(data, raw))
        elif semantic and path.name.endswith(".tar") and _loads(tar_entries, raw):
            path.write_bytes(_tar_mutation(data, raw))
        else:
            path.write_bytes(_bytes_mutation(data, raw))
    if scenario == "vouched damage":
        _vouch(d, counts=data.draw(st.booleans()))


def _vouch(d: Path, counts: bool) -> None:
    """Make the manifest vouch for the files as they now are: hashes, and with `counts` the
    shards' counts and the total from their indexes."""
    try:
        rehash(d, counts)
    except Exception:  # a manifest too damaged to redo, or a listed file gone: leave it
        pass


def _forge_record(d: Path) -> None:
    """A verification record vouching for the listed tars as they now are, as whoever made the
    set could write it where they made it."""
    try:
        names = [s["name"] for s in json.loads((d / MANIFEST).read_text())["shards"]]
        shards = {n: dict(zip(("bytes", "mtime_ns", "ctime_ns"), file_identity(os.stat(d / n)))) for n in names}
        (d / RECORD).write_text(json.dumps({"verifier": VERIFIER, "manifest_sha256": file_sha256(d / MANIFEST),
                                            "shards": shards}))
    except Exception:  # a manifest too damaged to name its tars, a listed file gone: the copied record stays
        pass


def _loads(fn, raw: bytes) -> bool:
    try:
        fn(io.BytesIO(raw)) if fn is np.load else fn(raw)
        return True
    except Exception:
        return False


# ---- the test ---------------------------------------------------------------------------------

def _intact(shard, clean_set: Path) -> bool:
    clean = [clean_set / Path(f).name for f in (shard.path, shard.index)]
    return all(c.exists() and Path(f).read_bytes() == c.read_bytes() for f, c in zip((shard.path, shard.index), clean))


def _named(error: BadInputError, d: Path) -> None:
    assert Path(error.path).parent == d, f"{error} does not name a file of {d}"
    assert str(error).startswith(error.path)


def _outcome(read, d: Path):
    """read(), or None when it fails as it may: a BadInputError naming a file of the set."""
    try:
        return read()
    except BadInputError as e:
        _named(e, d)
        return None


def _loader_items(d: Path, mode: str) -> tuple[list[tuple[int, tuple]], int, int]:
    """(position, (key, source ids)) of each sample one epoch yields, samples skipped, positions."""
    loader = ShardLoader(d, ReaderConfig(batch_size=1, shuffle=False, on_bad_input=mode))
    items = [(loader.consumed - 1, (batch["keys"][0], batch["source_ids"][0].tolist())) for batch in loader]
    return items, loader.skipped, len(loader)


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    report_fuzz_outcomes(OUTCOMES)


def _note(outcome: str) -> None:
    event(outcome)  # in hypothesis's statistics
    OUTCOMES["shard"][outcome] += 1


@given(data=st.data())
def test_shard_reader(sets, data):
    """Shard sets mutated as the module says, read through every entry point."""
    kind = data.draw(st.sampled_from(sorted(sets)))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / kind
        shutil.copytree(sets[kind], d)
        mutate(data, d)
        if data.draw(st.booleans()):
            _forge_record(d)
            d = shutil.copytree(d, Path(tmp) / "received")
            _note("received with a record vouching for it")
        shards = _outcome(lambda: open_shard_sets(d)[0], d)
        if shards is None:  # a manifest refused, or a listed file missing: so for every reader, skip mode too
            _note("set refused on opening")
            for read in (inspect_shards, ShardLoader, lambda d: ShardLoader(d, ReaderConfig(on_bad_input="skip"))):
                with pytest.raises(BadInputError) as err:
                    read(d)
                _named(err.value, d)
            return
        expected = Expected(shards)
        for i, shard in enumerate(shards):
            got = _outcome(lambda: [_ours(s) for s in iter_shard(shard)], d)
            assert got is None or got == expected[i]  # exactly what the tar holds: none dropped or repeated
            _note(f"shard {i}: " + ("refused" if got is None else "read, intact" if _intact(shard, sets[kind])
                                    else "read, changed files the manifest vouches for"))
        shown = _outcome(lambda: json.loads(inspect_shards(d, samples=2, as_json=True))["samples"], d)
        assert shown is None or [_ours(s) for s in shown] == expected[0][:len(shown)]
        counts = [shard.count for shard in shards]
        if sum(counts) == 0:
            with pytest.raises(ValueError, match="cannot fill one step"):
                ShardLoader(d)
            return
        loaded = _outcome(lambda: _loader_items(d, "error"), d)
        _note("error mode: " + ("bad input named" if loaded is None else "all read"))
        if loaded is not None:
            items, skipped, positions = loaded
            assert skipped == 0 and [item for _, item in items] == [_source(s) for i in range(len(shards))
                                                                    for s in expected[i]]
        items, skipped, positions = _loader_items(d, "skip")
        assert len(items) + skipped == positions == sum(counts)  # every position read or counted
        _note("skip mode: " + ("all read" if not skipped else "some skipped" if items else "all skipped"))
        starts = np.cumsum([0, *counts])
        for position, item in items:  # a sample skip mode yields is the one at its position
            i = int(np.searchsorted(starts, position, side="right") - 1)
            assert item == _source(expected[i][position - starts[i]])
