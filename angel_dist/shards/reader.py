"""The training reader: shard sets -> padded batches, deterministic and exactly resumable.

Order of an epoch: the shards in a seeded per-epoch order form one sequence of T samples;
global worker g (rank * num_workers + dataloader worker) of W reads the contiguous range
[g * T//W, (g + 1) * T//W) (the last T mod W samples of the epoch are left out so every
rank takes the same number of steps). A worker cuts its range into blocks of
`shuffle_buffer` samples, permutes each block with a seed of (seed, epoch, g, block)
(optionally sorting it by length into buckets) and cuts it into batches. DataLoader hands
out worker batches round-robin, so the position of a run is just (epoch, batches consumed):
to resume, each worker seeks to the block holding its next batch (skipping tar members by
their headers, not reading them) and rebuilds that block.

WebDataset's own pipeline has no exact resume, which is why this reader walks the tars
itself; the shards are ordinary WebDataset tars all the same.
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
from angel_dist.shards.format import decode_sample
from angel_dist.shards.tar import TarFormatError, iter_members, open_archive, split_key
from angel_dist.shards.writer import read_manifest


@dataclass(frozen=True)
class Shard:
    path: str
    count: int
    sha256: str


def open_shard_sets(dirs: list[str | Path] | str | Path, tokenizer_fingerprint: str | None = None) -> list[Shard]:
    """The shards of one or more complete shard sets, refusing another tokenizer's ids."""
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    shards = []
    for d in dirs:
        manifest = read_manifest(d)
        theirs = manifest.get("tokenizer_fingerprint")
        if tokenizer_fingerprint is not None and theirs != tokenizer_fingerprint:
            raise ValueError(f"{d} was tokenized with tokenizer {theirs}, but the model's tokenizer is "
                             f"{tokenizer_fingerprint}; rebuild the shards with this tokenizer")
        shards += [Shard(str(Path(d) / s["name"]), s["count"], s["sha256"]) for s in manifest["shards"]]
    return shards


def _first_problem(buf, path: str) -> str:
    try:
        for _ in iter_members(buf, path):
            pass
    except TarFormatError as e:
        return str(e)
    return f"{path}: content differs from its manifest (sha256 mismatch) though every member header is intact"


def iter_shard(shard: Shard, skip: int = 0, verify: bool = True) -> Iterator[dict]:
    """Decoded samples of one shard, after skipping `skip` samples by their headers only."""
    buf = open_archive(shard.path)
    if verify and hashlib.sha256(buf).hexdigest() != shard.sha256:
        problem = _first_problem(buf, shard.path)
        raise BadInputError(shard.path, None, f"corrupt shard: {problem}")
    key, fields, seen = None, {}, 0
    try:
        for member in iter_members(buf, shard.path):
            k, field = split_key(member.name)
            if k != key:
                if key is not None:
                    if seen >= skip:
                        yield _decode(shard, key, fields)
                    seen += 1
                key, fields = k, {}
            fields[field] = None if seen < skip else buf[member.offset:member.offset + member.size]
        if key is not None and seen >= skip:
            yield _decode(shard, key, fields)
    except TarFormatError as e:
        raise BadInputError(shard.path, None, f"corrupt shard: {e.problem} (member {e.member!r})") from None


def _decode(shard: Shard, key: str, fields: dict) -> dict:
    try:
        return decode_sample(key, fields)
    except (ValueError, KeyError) as e:
        raise BadInputError(shard.path, None, f"bad sample (member {key}.*): {e}") from None


@dataclass(frozen=True)
class ReaderConfig:
    batch_size: int = 32
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 4096  # samples per shuffled block, rounded up to a multiple of batch_size
    bucket: bool = False  # sort each block by source length before cutting it into batches
    on_bad_input: str = "error"  # or "skip": count and drop corrupt shards' unreadable samples
    verify: bool = True  # check each shard's sha256 against the manifest when opening it

    @property
    def block(self) -> int:
        return -(-max(self.shuffle_buffer, 1) // self.batch_size) * self.batch_size


def collate(samples: list[dict], pad_id: int, decoder_start_id: int) -> dict:
    """Pad to the batch maximum. decoder_ids = [decoder_start] + prefix + target; target_mask
    marks the target tokens (the name and eos), the only ones the loss and scores count."""
    n = len(samples)
    src_len = max(len(s["source_ids"]) for s in samples)
    dec = [np.concatenate([[decoder_start_id], s["prefix_ids"], s["target_ids"]]) for s in samples]
    dec_len = max(len(d) for d in dec)
    source = torch.full((n, src_len), pad_id, dtype=torch.long)
    source_mask = torch.zeros((n, src_len), dtype=torch.bool)
    decoder = torch.full((n, dec_len), pad_id, dtype=torch.long)
    decoder_mask = torch.zeros((n, dec_len), dtype=torch.bool)
    target_mask = torch.zeros((n, dec_len), dtype=torch.bool)
    for i, (s, d) in enumerate(zip(samples, dec)):
        ls, ld, lp = len(s["source_ids"]), len(d), 1 + len(s["prefix_ids"])
        source[i, :ls] = torch.from_numpy(s["source_ids"].astype(np.int64))
        source_mask[i, :ls] = True
        decoder[i, :ld] = torch.from_numpy(d.astype(np.int64))
        decoder_mask[i, :ld] = True
        target_mask[i, lp:ld] = True
    return {"source_ids": source, "source_mask": source_mask, "decoder_ids": decoder, "decoder_mask": decoder_mask,
            "target_mask": target_mask, "keys": [s["__key__"] for s in samples],
            "cuis": [s["cuis"] for s in samples], "targets": [s["target"] for s in samples],
            "prefixes": [s["prefix"] for s in samples]}


class ShardStream(IterableDataset):
    """Batches of one rank; DataLoader workers split it. Set `epoch` and `start_batch` first."""

    def __init__(self, shards: list[Shard], config: ReaderConfig, rank: int, world_size: int, pad_id: int,
                 decoder_start_id: int):
        self.shards, self.config = shards, config
        self.rank, self.world_size = rank, world_size
        self.pad_id, self.decoder_start_id = pad_id, decoder_start_id
        self.epoch, self.start_batch, self.num_workers = 0, 0, 1
        self.total = sum(s.count for s in shards)
        self._order = self._cursor = None

    def per_worker(self, num_workers: int) -> int:
        return self.total // (self.world_size * num_workers)

    def batches_per_worker(self, num_workers: int) -> int:
        return -(-self.per_worker(num_workers) // self.config.batch_size)

    def _epoch_shards(self) -> tuple[list[Shard], np.ndarray]:
        if self._order is not None and self._order[0] == self.epoch:
            return self._order[1]
        shards = self.shards
        if self.config.shuffle:
            shards = sorted(shards, key=lambda s: stable_hash64(f"{self.epoch}/{Path(s.path).name}/{s.sha256}",
                                                                self.config.seed))
        self._order = (self.epoch, (shards, np.cumsum([0] + [s.count for s in shards])))
        return self._order[1]

    def _read(self, start: int, n: int, policy: BadInputPolicy) -> list[dict]:
        """Samples at epoch positions [start, start + n); consecutive calls continue one open shard."""
        shards, bounds = self._epoch_shards()
        out: list[dict] = []
        i = int(np.searchsorted(bounds, start, side="right") - 1)
        offset = int(start - bounds[i])
        while len(out) < n and i < len(shards):
            want = min(n - len(out), shards[i].count - offset)
            if self._cursor is None or self._cursor[:2] != (i, offset):
                self._cursor = (i, offset, iter_shard(shards[i], skip=offset, verify=self.config.verify))
            samples, got = self._cursor[2], 0
            try:
                while got < want:
                    out.append(next(samples))
                    got += 1
            except (BadInputError, StopIteration) as e:
                problem = e.problem if isinstance(e, BadInputError) else "holds fewer samples than its manifest says"
                policy.bad(shards[i].path, None, problem)
                # The lost positions still count as read, so every reader keeps its place in the epoch.
                self.skipped += want - got
                got, self._cursor = want, None
            if self._cursor is not None:
                self._cursor = (i, offset + got, samples)
            if offset + got >= shards[i].count:
                i, offset = i + 1, 0
            else:
                break
        return out

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        nw = info.num_workers if info else 1
        # DataLoader asks its workers round-robin from worker 0, but after resuming at
        # start_batch the next batch belongs to reader start_batch % nw: rotate the roles.
        wid = ((info.id if info else 0) + self.start_batch) % nw
        g, cfg = self.rank * nw + wid, self.config
        per = self.per_worker(nw)
        if per == 0:
            raise ValueError(f"{self.total} samples cannot feed {self.world_size * nw} readers")
        policy = BadInputPolicy(cfg.on_bad_input)
        self.skipped, self._cursor = 0, None
        # Batch j of the epoch comes from reader j % nw: skip this reader's share of start_batch.
        skip = (self.start_batch - wid + nw - 1) // nw if self.start_batch > wid else 0
        per_block = cfg.block // cfg.batch_size
        block = skip // per_block
        skip -= block * per_block
        while block * cfg.block < per:
            lo = block * cfg.block
            samples = self._read(g * per + lo, min(cfg.block, per - lo), policy)
            order = hash_permutation(len(samples), cfg.seed, "block", self.epoch, g, block) if cfg.shuffle \
                else np.arange(len(samples))
            if cfg.bucket:
                lengths = np.array([len(samples[k]["source_ids"]) for k in order])
                order = order[np.argsort(lengths, kind="stable")]
            batches = [order[k:k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
            if cfg.bucket and cfg.shuffle:
                batches = [batches[k] for k in hash_permutation(len(batches), cfg.seed, "buckets", self.epoch, g, block)]
            for b in batches[skip:]:
                batch = collate([samples[k] for k in b], self.pad_id, self.decoder_start_id)
                batch["skipped"] = self.skipped
                self.skipped = 0
                yield batch
            skip = 0
            block += 1
        if self.skipped:  # lost samples after this reader's last batch still reach the loader's count
            yield {"skipped": self.skipped}
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
        self.stream = ShardStream(open_shard_sets(dirs, tokenizer_fingerprint), config, rank, world_size, pad_id,
                                  decoder_start_id)
        self.epoch, self.batch, self.skipped = 0, 0, 0

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        nw = max(self.num_workers, 1)
        return self.stream.batches_per_worker(nw) * nw

    def _layout(self) -> dict:
        return {"world_size": self.stream.world_size, "rank": self.stream.rank, "num_workers": self.num_workers,
                "total": self.stream.total, **asdict(self.config)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "layout": self._layout()}

    def load_state_dict(self, state: dict) -> None:
        mine = self._layout()
        diff = {k: (state["layout"].get(k), v) for k, v in mine.items()
                if k not in ("on_bad_input", "verify") and state["layout"].get(k) != v}
        if diff:
            raise ValueError(f"reader state was saved with another layout; differences (saved, now): {diff}")
        self.epoch, self.batch = state["epoch"], state["batch"]

    def __iter__(self) -> Iterator[dict]:
        self.stream.epoch, self.stream.start_batch = self.epoch, self.batch
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=False, multiprocessing_context="fork" if self.num_workers else None)
        for batch in loader:
            self.skipped += batch.pop("skipped")
            if batch:
                self.batch += 1
                yield batch
        self.epoch, self.batch = self.epoch + 1, 0
