"""Stable hashing: sample keys, shard assignment and per-concept random streams.

Everything random in the corpus derives from these hashes of (seed, name), never from
Python's per-process `hash()` or a global RNG, so a rerun on any machine writes the same
bytes and a shard's content does not depend on which worker wrote it.
"""

from __future__ import annotations

import hashlib
import random
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_:\-]")
_KEY_PART_MAX = 60


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def stable_hash64(text: str, seed: int = 0) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def shard_of(group: str, n_shards: int) -> int:
    """The shard a group of samples (a concept, a mention) belongs to."""
    return stable_hash64(group, seed=0x5A4D) % n_shards


def rng_for(seed: int, *parts: object) -> random.Random:
    """A random stream determined by (seed, parts). Callers use only `.random()`, the one
    method whose sequence Python keeps stable across versions."""
    return random.Random(stable_hash64("\x1f".join(map(str, parts)), seed))


def key_part(text: str) -> str:
    """A piece of a WebDataset key: no dots (they start the field name) and no slashes.

    Text that is already safe is kept as is; otherwise unsafe characters become `_` and a
    hash of the original keeps distinct inputs distinct.
    """
    safe = _UNSAFE.sub("_", text)
    if safe == text and len(text) <= _KEY_PART_MAX:
        return text
    return f"{safe[:_KEY_PART_MAX]}_{stable_hash64(text):016x}"


def hash_permutation(n: int, seed: int, *parts: object) -> "np.ndarray":
    """A permutation of range(n) determined by (seed, parts), stable across NumPy versions."""
    import numpy as np

    base = np.uint64(stable_hash64("\x1f".join(map(str, parts)), seed))
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base
        # splitmix64 finalizer
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return np.argsort(x, kind="stable")
