"""Tokenizers: load a local/cached one, or train a byte-level BPE on a KB; fingerprint them.

A trained tokenizer is saved as a BART fast tokenizer (`AutoTokenizer.from_pretrained(DIR)`
loads it) with BART's special tokens, so models built from presets and tokenizers trained
here behave like bart-base/large with their own vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq
from tokenizers import ByteLevelBPETokenizer

from angel_dist.atomic import atomic_path, write_json
from angel_dist.hf_files import check_hf_directory, read_as
from angel_dist.kb.table import kb_fingerprint, read_kb_meta

BART_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
MIN_VOCAB_SIZE = len(BART_SPECIAL_TOKENS) + 256 + 1  # the special tokens, every byte, and one merge
INFO_FILE = "angel_tokenizer.json"


# A tokenizer's own files, one of which every saved tokenizer has. Without any, transformers 5
# builds a tokenizer of the special tokens alone from a model's config (5 tokens for BART's).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


def _has_tokenizer_files(name_or_dir: str | Path) -> bool:
    if Path(name_or_dir).is_dir():
        return any((Path(name_or_dir) / name).is_file() for name in TOKENIZER_FILES)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return any(isinstance(try_to_load_from_cache(str(name_or_dir), name), str) for name in TOKENIZER_FILES)
    except HFValidationError:  # neither a directory here nor a hub name
        return False


def load_tokenizer(name_or_dir: str | Path):
    """A fast HF tokenizer from a local directory or a name in the local HF cache."""
    from transformers import AutoTokenizer

    check_hf_directory(name_or_dir)
    if not _has_tokenizer_files(name_or_dir):
        raise ValueError(f"{name_or_dir!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) here or in "
                         f"the local Hugging Face cache")
    try:  # never a download: a local directory or what the HF cache already holds
        with read_as(name_or_dir, "a tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_dir), local_files_only=True)
    except OSError as e:
        raise ValueError(f"{name_or_dir!r} is neither a tokenizer directory nor a tokenizer in the local "
                         f"Hugging Face cache: {e}") from None
    if not tokenizer.is_fast:
        raise ValueError(f"{name_or_dir}: a fast (Rust) tokenizer is required, got {type(tokenizer).__name__}")
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of vocabulary, merges and special/added tokens: what fixes the token ids."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    canonical = {
        "type": model.get("type"),
        "vocab": sorted(model.get("vocab", {}).items(), key=lambda kv: kv[1]),
        "merges": merges,
        "added": sorted((t["id"], t["content"], t["special"]) for t in spec.get("added_tokens", [])),
        "special": sorted(tokenizer.special_tokens_map.items()),
    }
    payload = json.dumps(canonical, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:32]


def _kb_texts(kb_path: Path, batch_rows: int = 65536) -> Iterator[list[str]]:
    parquet = pq.ParquetFile(kb_path)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=["names", "definitions"]):
        yield pc.list_flatten(batch.column("names")).to_pylist()
        yield pc.list_flatten(batch.column("definitions")).to_pylist()


def train_tokenizer(kb_path: str | Path, vocab_size: int, out_dir: str | Path,
                    min_frequency: int = 2, progress: bool = True) -> dict:
    """Train a byte-level BPE on the KB's names and definitions and save it to `out_dir`."""
    kb_path = Path(kb_path)
    meta = read_kb_meta(kb_path)
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (special tokens, bytes and a merge)")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_kb_texts(kb_path), vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=BART_SPECIAL_TOKENS, show_progress=progress)
    from transformers import BartTokenizerFast

    with atomic_path(out_dir, directory=True) as tmp:
        bpe.save_model(str(tmp))
        # Positional: the keyword names differ between transformers 4 and 5.
        tokenizer = BartTokenizerFast(str(tmp / "vocab.json"), str(tmp / "merges.txt"))
        tokenizer.save_pretrained(str(tmp))
        info = {"fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer),
                "trained_on": {"kb": str(kb_path), "kb_fingerprint": meta["fingerprint"]},
                "min_frequency": min_frequency}
        write_json(tmp / INFO_FILE, info)
    return info


def kb_and_tokenizer_ids(kb_path: str | Path, tokenizer) -> dict:
    """The fingerprints every artifact built from a KB and a tokenizer records."""
    return {"kb_fingerprint": kb_fingerprint(kb_path), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)}
