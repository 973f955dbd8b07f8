"""The training reader: shard sets -> padded batches, deterministic and exactly resumable.

Each epoch is one sequence of the T samples of the shard sets, a function of (seed, epoch)
only: the shards in a seeded order, cut into blocks of `shuffle_buffer` samples, each block
permuted with a seed of (seed, epoch, block) and, with `bucket`, sorted by source length
and cut into runs of `bucket_size` samples whose order is permuted again. Training walks
the sequence in global micro-batches of world_size * batch_size samples; rank r takes the
r-th slice of each, and DataLoader worker w of a rank builds its batches w, w + n, ...
(DataLoader hands them out round-robin, so the rank sees them in order). The position of a
run is therefore one number, the samples consumed in the epoch, and a run resumes at it
with any world size, batch size or number of workers; the last T mod (world_size *
batch_size) samples of an epoch are left out so every rank takes the same number of steps.

Samples are read at random positions through each shard's index (`shard-NNNNN.idx.npy`:
byte offset and source length of every sample), from memory-mapped tars. WebDataset's own
pipeline has no exact resume, which is why this reader walks the tars itself; the shards
are ordinary WebDataset tars all the same.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from angel_dist.errors import BadInputError, BadInputPolicy
from angel_dist.keys import hash_permutation, stable_hash64
from angel_dist.shards.format import FIELDS, SAMPLE_KINDS, SampleFormatError, decode_sample, parse_npy
from angel_dist.shards.tar import BLOCK, TarFormatError, iter_members, open_archive, split_key
from angel_dist.shards.verify import file_identity, vouched_tars
from angel_dist.shards.writer import MANIFEST, read_manifest


@dataclass(frozen=True)
class Shard:
    """One shard as its set's manifest describes it (shards/README.md)."""
    path: str  # the tar
    count: int
    bytes: int
    sha256: str
    index: str  # the shard's .idx.npy
    index_bytes: int
    index_sha256: str
    kinds: tuple[str, ...]  # the sample kinds its set may hold
    # (size, mtime_ns, ctime_ns) of the tar when it passed the full check (shards/verify.py): a tar
    # that still has them is not hashed and walked again.
    vouched: tuple[int, int, int] | None = None


def shards_of(directory: str | Path, manifest: dict) -> list[Shard]:
    """The shards listed by a manifest that `read_manifest` has checked, once every listed tar
    and index is found in `directory`, with what the set's verification record vouches for."""
    d = Path(directory)
    for i, entry in enumerate(manifest["shards"]):
        for field in ("name", "index"):
            if not (d / entry[field]).is_file():
                raise BadInputError(d / entry[field], None, f"listed in {d / MANIFEST} (shards[{i}].{field}) "
                                                            f"but missing")
    vouched = vouched_tars(d, manifest)
    return [Shard(str(d / s["name"]), s["count"], s["bytes"], s["sha256"], str(d / s["index"]), s["index_bytes"],
                  s["index_sha256"], SAMPLE_KINDS[manifest["kind"]], vouched.get(s["name"]))
            for s in manifest["shards"]]


def open_shard_sets(dirs: list[str | Path] | str | Path,
                    tokenizer_fingerprint: str | None = None) -> tuple[list[Shard], str]:
    """The shards of one or more complete shard sets of one kind, refusing another tokenizer's ids
    and a shard listed twice (the same set given twice would repeat its samples)."""
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    shards, kinds = [], set()
    for d in dirs:
        manifest = read_manifest(d)
        theirs = manifest.get("tokenizer_fingerprint")
        if tokenizer_fingerprint is not None and theirs != tokenizer_fingerprint:
            raise ValueError(f"{d} was tokenized with tokenizer {theirs}, but the model's tokenizer is "
                             f"{tokenizer_fingerprint}; rebuild the shards with this tokenizer")
        kinds.add(manifest["kind"])
        shards += shards_of(d, manifest)
    if len(kinds) > 1:
        raise ValueError(f"cannot mix shard sets of kinds {sorted(kinds)} in one reader")
    files = [Path(s.path).resolve() for s in shards]
    if len(set(files)) < len(files):
        twice = sorted({str(f) for f in files if files.count(f) > 1})
        raise ValueError(f"shard(s) {', '.join(twice)} given more than once (the same shard set twice?)")
    return shards, kinds.pop()


def load_index(shard: Shard) -> np.ndarray:
    """The shard's index, int64 [count, 2] (byte offset of each sample, its source length), after
    checking it against the manifest entry (size, sha256, rows) and the tar (offsets at block
    boundaries, from 0, strictly increasing, inside the tar): a duplicated or stray offset would
    otherwise repeat one sample and lose another, silently."""
    try:
        data = Path(shard.index).read_bytes()
    except OSError as e:
        raise BadInputError(shard.index, None, f"cannot read the shard index: {e.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != shard.index_bytes or digest != shard.index_sha256:
        raise BadInputError(shard.index, None, f"index differs from its manifest entry ({len(data)} bytes, sha256 "
                                               f"{digest[:16]}...; the manifest says {shard.index_bytes} bytes, "
                                               f"{shard.index_sha256[:16]}...)")
    try:
        rows = parse_npy(data)
    except ValueError as e:
        raise BadInputError(shard.index, None, f"not a .npy index: {e}") from None
    if rows.dtype != np.dtype("<i8") or rows.shape != (shard.count, 2):
        raise BadInputError(shard.index, None, f"expected int64 rows [{shard.count}, 2] (count from the manifest), "
                                               f"got {rows.dtype.str} {rows.shape}")
    offsets = rows[:, 0]
    if shard.count and (offsets[0] != 0 or (np.diff(offsets) <= 0).any() or (offsets % BLOCK).any()
                        or offsets[-1] > shard.bytes - 3 * BLOCK or (rows[:, 1] < 0).any()):
        raise BadInputError(shard.index, None, f"offsets must start at 0, increase strictly in steps of {BLOCK} "
                                               f"bytes and stay inside the tar ({shard.bytes} bytes), lengths be "
                                               f">= 0; got offsets {_excerpt(offsets)}")
    return rows


def _excerpt(values: np.ndarray) -> str:
    return str(values[:8].tolist())[:-1] + (", ...]" if len(values) > 8 else "]")


def _first_problem(buf, path: str) -> str:
    try:
        for _ in iter_members(buf, path):
            pass
    except TarFormatError as e:
        return str(e)
    return f"{path}: content differs from its manifest (sha256 mismatch) though every member header is intact"


def open_tar(shard: Shard, offsets: np.ndarray, verify: bool):
    """The shard's tar, mapped; its size always checked against the manifest and, with `verify`,
    its sha256 and every member (see `_walk`), unless the set's verification record vouches for
    the file mapped (shards/verify.py)."""
    buf, seen = map_tar(shard)
    check_tar(buf, shard, offsets, verify and seen != shard.vouched)
    return buf


def map_tar(shard: Shard):
    """(the shard's tar mapped, the (size, mtime_ns, ctime_ns) of the file mapped)."""
    try:
        buf, stat = open_archive(shard.path)
    except OSError as e:
        raise BadInputError(shard.path, None, f"cannot read the shard: {e.strerror}") from None
    return buf, file_identity(stat)


def check_tar(buf, shard: Shard, offsets: np.ndarray, verify: bool) -> None:
    """The size of a mapped tar against the manifest and, with `verify`, its sha256 and every member."""
    if len(buf) != shard.bytes or (verify and hashlib.sha256(buf).hexdigest() != shard.sha256):
        size = f" ({len(buf)} bytes, the manifest says {shard.bytes})" if len(buf) != shard.bytes else ""
        raise BadInputError(shard.path, None, f"corrupt shard{size}: {_first_problem(buf, shard.path)}")
    if verify:
        _walk(buf, shard, offsets)


def _walk(buf, shard: Shard, offsets: np.ndarray) -> None:
    """Every member once: regular files only, each sample exactly its FIELDS under a key seen
    once, sample starts exactly the index's offsets (no sample it misses, none it repeats), and
    nothing but end-of-archive zeros after the last member."""
    starts, keys, key, fields, end = [], set(), None, [], 0

    def close_sample():
        if key is not None and sorted(fields) != sorted(FIELDS):
            raise BadInputError(shard.path, None, f"sample {key!r} has members {fields}, expected {list(FIELDS)}")

    try:
        for member in iter_members(buf, shard.path):
            k, field = split_key(member.name)
            if k != key:
                close_sample()
                if k in keys:
                    raise BadInputError(shard.path, None, f"key {k!r} appears twice (member {member.name!r})")
                keys.add(k)
                starts.append(member.offset - BLOCK)
                key, fields = k, []
            fields.append(field)
            end = member.offset + member.size + (-member.size % BLOCK)
        close_sample()
    except TarFormatError as e:
        raise BadInputError(shard.path, None, f"corrupt shard: {e.problem} (member {e.member!r})") from None
    if len(buf) - end < 2 * BLOCK or buf[end:].count(0) != len(buf) - end:
        raise BadInputError(shard.path, None, f"expected only end-of-archive zero blocks after byte {end}")
    if starts != offsets.tolist():
        i = next((i for i, (a, b) in enumerate(zip(starts, offsets.tolist())) if a != b), min(len(starts),
                                                                                              len(offsets)))
        raise BadInputError(shard.path, None, f"the tar holds {len(starts)} samples, its index {len(offsets)}; they "
                                              f"first differ at sample {i} (tar byte "
                                              f"{starts[i] if i < len(starts) else 'end'}, index byte "
                                              f"{offsets[i] if i < len(offsets) else 'end'})")


def _decode(shard: Shard, key: str, fields: dict) -> dict:
    try:
        sample = decode_sample(key, fields)
    except SampleFormatError as e:
        raise BadInputError(shard.path, None, f"bad sample (member {e.member!r}): {e.problem}") from None
    if sample["kind"] not in shard.kinds:
        raise BadInputError(shard.path, None, f"sample {key!r} of kind {sample['kind']!r} in a set of "
                                              f"{'/'.join(shard.kinds)} samples")
    return sample


def read_sample(buf, shard: Shard, offset: int, verified: bool = False) -> dict:
    """The sample whose first member header is at byte `offset`; `verified`: its tar passed
    `open_tar(verify=True)`, whose strict walk (now or when the set was verified) leaves nothing
    for a strict read to catch."""
    key, fields = None, {}
    try:
        for member in iter_members(buf, shard.path, start=offset, strict=not verified):
            k, field = split_key(member.name)
            if key is not None and k != key:
                break
            key = k
            fields[field] = buf[member.offset:member.offset + member.size]
            if len(fields) == len(FIELDS):  # complete: no need to parse the next sample's header
                break
    except TarFormatError as e:
        raise BadInputError(shard.path, None, f"corrupt shard: {e.problem} (member {e.member!r})") from None
    if key is None:
        raise BadInputError(shard.path, None, f"no sample at byte {offset} (the index and the tar disagree)")
    return _decode(shard, key, fields)


def iter_shard(shard: Shard, verify: bool = True) -> Iterator[dict]:
    """Every sample of one shard, in order."""
    offsets = load_index(shard)[:, 0]
    buf = open_tar(shard, offsets, verify)
    for offset in offsets:
        yield read_sample(buf, shard, int(offset), verify)


@dataclass(frozen=True)
class ReaderConfig:
    batch_size: int = 32  # per rank and micro-batch
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 4096  # samples per shuffled block
    bucket: bool = False  # sort each block by source length, in runs of bucket_size samples
    bucket_size: int = 512
    on_bad_input: str = "error"  # or "skip": count and drop the samples of corrupt shards
    verify: bool = True  # check each shard's sha256 and members when a process first opens it (see open_tar)
    pad_to: tuple[int, ...] = ()  # increasing lengths rows are padded up to (see padded_length); () = batch maximum

    def order(self) -> dict:
        """The settings that fix the epoch sequence (a resumed run must keep them)."""
        return {k: v for k, v in asdict(self).items() if k in ("seed", "shuffle", "shuffle_buffer", "bucket",
                                                               "bucket_size")}


class EpochSequence:
    """Sequence position -> (shard, sample) for one epoch; blocks are built on demand."""

    def __init__(self, shards: list[Shard], lengths: list[np.ndarray], config: ReaderConfig, epoch: int):
        order = list(range(len(shards)))
        if config.shuffle:
            order.sort(key=lambda i: stable_hash64(f"{epoch}/{Path(shards[i].path).name}/{shards[i].sha256}",
                                                   config.seed))
        self.shard_ids = np.array(order, dtype=np.int64)
        counts = np.array([shards[i].count for i in order], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.total = int(self.starts[-1])
        self.lengths = lengths
        self.config, self.epoch = config, epoch
        self._blocks: dict[int, np.ndarray] = {}

    def _locate(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.starts, flat, side="right") - 1
        return self.shard_ids[pos], flat - self.starts[pos]

    def block(self, k: int) -> np.ndarray:
        """Flat indices (into the ordered shards) of block k, in sequence order."""
        if k not in self._blocks:
            cfg = self.config
            lo, hi = k * cfg.shuffle_buffer, min((k + 1) * cfg.shuffle_buffer, self.total)
            flat = np.arange(lo, hi, dtype=np.int64)
            if cfg.shuffle:
                flat = flat[hash_permutation(len(flat), cfg.seed, "block", self.epoch, k)]
            if cfg.bucket:
                shard, local = self._locate(flat)
                size = np.array([self.lengths[s][j] for s, j in zip(shard.tolist(), local.tolist())])
                flat = flat[np.argsort(size, kind="stable")]
                runs = [flat[i:i + cfg.bucket_size] for i in range(0, len(flat), cfg.bucket_size)]
                if cfg.shuffle:
                    runs = [runs[i] for i in hash_permutation(len(runs), cfg.seed, "runs", self.epoch, k)]
                flat = np.concatenate(runs) if runs else flat
            if len(self._blocks) > 2:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[k] = flat
        return self._blocks[k]

    def at(self, start: int, n: int) -> list[tuple[int, int]]:
        """(shard id, sample index in the shard) of positions [start, start + n)."""
        out, B = [], self.config.shuffle_buffer
        for p in range(start, start + n):
            flat = self.block(p // B)[p % B]
            pos = int(np.searchsorted(self.starts, flat, side="right") - 1)
            out.append((int(self.shard_ids[pos]), int(flat - self.starts[pos])))
        return out


def padded_length(length: int, pad_to: tuple[int, ...] = ()) -> int:
    """The length a batch whose longest row has `length` ids is padded to: itself without `pad_to`,
    else the first of the increasing `pad_to` lengths that holds it, past the last a multiple of
    the last. A run then sees a few fixed shapes, which compiled steps and CUDA graphs need (each
    new shape is a new graph); the padding is masked, so losses do not change."""
    if not pad_to or length <= 0:
        return length
    return next((p for p in pad_to if p >= length), -(-length // pad_to[-1]) * pad_to[-1])


def pad_rows(rows: list[np.ndarray], pad_id: int, pad_to: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Id rows padded to the longest, or further (see padded_length): (ids int64 [n, L], mask bool [n, L])."""
    length = padded_length(max(len(r) for r in rows), pad_to)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
        mask[i, :len(r)] = True
    return ids, mask


def collate(samples: list[dict], pad_id: int, decoder_start_id: int, pad_to: tuple[int, ...] = ()) -> dict:
    """Pad to the batch maximum, or up to a length of `pad_to` (see padded_length): sources and
    decoder rows each. decoder_ids = [decoder_start] + prefix + target; target_mask marks the
    target tokens (the name and eos), the only ones the loss and scores count. Pair samples give
    chosen_* and rejected_* decoder rows, padded to one length."""
    n = len(samples)
    source, source_mask = pad_rows([s["source_ids"] for s in samples], pad_id, pad_to)
    batch = {"source_ids": source, "source_mask": source_mask, "keys": [s["__key__"] for s in samples],
             "cuis": [s["cuis"] for s in samples], "prefixes": [s["prefix"] for s in samples]}
    pair = samples[0]["kind"] == "pair"
    names = ("chosen", "rejected") if pair else ("target",)
    rows = {name: [np.concatenate([[decoder_start_id], s["prefix_ids"], s[f"{name}_ids"]]) for s in samples]
            for name in names}
    dec_len = padded_length(max(len(r) for rs in rows.values() for r in rs), pad_to)
    for name in names:
        decoder = torch.full((n, dec_len), pad_id, dtype=torch.long)
        decoder_mask = torch.zeros((n, dec_len), dtype=torch.bool)
        target_mask = torch.zeros((n, dec_len), dtype=torch.bool)
        for i, (s, d) in enumerate(zip(samples, rows[name])):
            decoder[i, :len(d)] = torch.from_numpy(d.astype(np.int64))
            decoder_mask[i, :len(d)] = True
            target_mask[i, 1 + len(s["prefix_ids"]):len(d)] = True
        prefix = "" if name == "target" else f"{name}_"
        batch.update({f"{prefix}decoder_ids": decoder, f"{prefix}decoder_mask": decoder_mask,
                      f"{prefix}target_mask": target_mask})
    if pair:
        for field in ("ref_chosen_logp", "ref_rejected_logp"):
            batch[field] = torch.tensor([s[field] for s in samples], dtype=torch.float32)
        batch["chosen"] = [s["chosen"] for s in samples]
        batch["rejected"] = [s["rejected"] for s in samples]
    else:
        batch["targets"] = [s["target"] for s in samples]
    return batch


class ShardStream(IterableDataset):
    """Batches of one rank from sequence position `start`; DataLoader workers split them."""

    def __init__(self, shards: list[Shard], config: ReaderConfig, rank: int, world_size: int, pad_id: int,
                 decoder_start_id: int):
        self.shards, self.config = shards, config
        self.rank, self.world_size = rank, world_size
        self.pad_id, self.decoder_start_id = pad_id, decoder_start_id
        self.total = sum(s.count for s in shards)
        self.epoch, self.start = 0, 0
        self._lengths: list[np.ndarray] | None = None
        self._bufs: dict[int, object] = {}
        self._bad: set[int] = set()

    @property
    def step_samples(self) -> int:
        return self.world_size * self.config.batch_size

    def batches(self, start: int = 0) -> int:
        """Batches per rank from position `start` to the end of the epoch."""
        return max(self.total - start, 0) // self.step_samples

    def _index(self, policy: BadInputPolicy) -> list[np.ndarray]:
        """Every shard's source lengths (bucketing needs them all up front), indexes checked."""
        if self._lengths is None:
            self._offsets, self._lengths = [], []
            for shard_id, shard in enumerate(self.shards):
                try:
                    rows = load_index(shard)
                    if not shard.count:  # no position reads it, so its tar is checked here: it must be empty too
                        open_tar(shard, rows[:, 0], self.config.verify)
                except BadInputError as e:
                    self._drop(shard_id, e, policy)
                    rows = np.zeros((shard.count, 2), np.int64)  # positions stay; the samples are skipped
                self._offsets.append(rows[:, 0])
                self._lengths.append(rows[:, 1])
        return self._lengths

    def _drop(self, shard_id: int, error: BadInputError, policy: BadInputPolicy) -> None:
        policy.bad(error.path, None, error.problem)  # raises unless skipping
        self._bad.add(shard_id)  # a shard that fails a check is dropped whole

    def _sample(self, shard_id: int, j: int, policy: BadInputPolicy) -> dict | None:
        shard = self.shards[shard_id]
        if shard_id in self._bad:
            return None
        try:
            if shard_id not in self._bufs:
                self._bufs[shard_id] = open_tar(shard, self._offsets[shard_id], self.config.verify)
            return read_sample(self._bufs[shard_id], shard, int(self._offsets[shard_id][j]), self.config.verify)
        except BadInputError as e:
            self._drop(shard_id, e, policy)
            return None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        policy = BadInputPolicy(self.config.on_bad_input)
        try:
            sequence = EpochSequence(self.shards, self._index(policy), self.config, self.epoch)
            b = self.config.batch_size
            for j in range(wid, self.batches(self.start), nw):
                first = self.start + j * self.step_samples + self.rank * b
                samples = [self._sample(s, k, policy) for s, k in sequence.at(first, b)]
                kept = [s for s in samples if s is not None]
                batch = collate(kept, self.pad_id, self.decoder_start_id, self.config.pad_to) if kept else {}
                batch["skipped"] = len(samples) - len(kept)
                yield batch
        except BadInputError as e:
            # Handed over as data: a DataLoader worker re-raises what it catches as a RuntimeError.
            yield {"bad_input": (e.path, e.line, e.problem)}
        policy.report(sys.stderr)


class ShardLoader:
    """Iterate batches of one rank epoch after epoch; `state_dict()` is the exact position.

    Iterating yields the rest of the current epoch, then moves to the next one.
    """

    def __init__(self, dirs, config: ReaderConfig = ReaderConfig(), *, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, pad_id: int = 1, decoder_start_id: int = 2,
                 tokenizer_fingerprint: str | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.config, self.num_workers = config, num_workers
        shards, self.kind = open_shard_sets(dirs, tokenizer_fingerprint)
        self.stream = ShardStream(shards, config, rank, world_size, pad_id, decoder_start_id)
        if self.stream.batches() == 0:
            raise ValueError(f"{self.stream.total} samples cannot fill one step of {self.stream.step_samples}")
        self.epoch, self.consumed, self.skipped = 0, 0, 0

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        return self.stream.batches()

    def _order(self) -> dict:
        return {"total": self.stream.total, "shards": [Path(s.path).name + ":" + s.sha256[:16]
                                                        for s in self.stream.shards], **self.config.order()}

    def state_dict(self) -> dict:
        """Epoch and samples consumed in it (by all ranks), with what fixes the sequence."""
        return {"epoch": self.epoch, "consumed": self.consumed, "order": self._order()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._order()
        diff = {k: (state["order"].get(k), v) for k, v in mine.items() if state["order"].get(k) != v}
        if diff:
            raise ValueError(f"reader state was saved over another sample sequence; differences (saved, now): "
                             f"{ {k: d for k, d in diff.items() if k != 'shards'} or 'the shard sets'}")
        self.epoch, self.consumed = state["epoch"], state["consumed"]

    def __iter__(self) -> Iterator[dict]:
        self.stream.epoch, self.stream.start = self.epoch, self.consumed
        # Its own generator: starting an iterator must not draw from the global RNG, or a resumed
        # run's dropout masks would drift from the uninterrupted run's.
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=False, multiprocessing_context="fork" if self.num_workers else None,
                            generator=torch.Generator().manual_seed(self.config.seed))
        for batch in loader:
            if "bad_input" in batch:
                raise BadInputError(*batch["bad_input"])
            self.consumed += self.stream.step_samples
            self.skipped += batch.pop("skipped")
            if batch:
                yield batch
        self.epoch, self.consumed = self.epoch + 1, 0
