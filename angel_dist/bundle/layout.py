"""A linker bundle on disk: everything `Linker.from_bundle` needs, checked when it is opened.

  config.json, model.safetensors, ...   the HF model and its tokenizer (`from_pretrained(DIR)` loads
                                        them; DIR is also a plain model directory for `--model`)
  trie/                                 the trie directory: its .npy arrays, heights, meta.json and
                                        names.parquet (name_id, name, cuis: the KB's names and ids)
  README.md                             the model card
  bundle.json                           last: format version, how inputs are prepared, fingerprints,
                                        and each file's role, size and sha256

The bundle is assembled under a temporary name and renamed into place, so a directory with a
bundle.json is complete.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from angel_dist.atomic import atomic_path, write_json
from angel_dist.digest import file_sha256
from angel_dist.errors import read_json

BUNDLE_FILE = "bundle.json"
CARD_FILE = "README.md"
TRIE_DIR = "trie"
FORMAT = "angel-dist linker bundle"
FORMAT_VERSION = 1

_ROLES = {
    "config.json": "model configuration (transformers BartConfig)",
    "generation_config.json": "transformers generation defaults (the trie search does not read them)",
    "model.safetensors": "model weights (safetensors)",
    "tokenizer.json": "tokenizer (HF fast tokenizer)",
    "tokenizer_config.json": "tokenizer settings",
    "special_tokens_map.json": "tokenizer special tokens",
    "vocab.json": "tokenizer vocabulary (BPE)",
    "merges.txt": "tokenizer merges (BPE)",
    "angel_export.json": "the training run and checkpoint the weights were exported from",
    CARD_FILE: "model card",
    f"{TRIE_DIR}/offsets.npy": "trie: int32 CSR offsets of each internal node's edges",
    f"{TRIE_DIR}/child_tokens.npy": "trie: int32 edge tokens",
    f"{TRIE_DIR}/child_nodes.npy": "trie: int32 edge targets",
    f"{TRIE_DIR}/heights.npy": "trie: int32 per node, the most tokens a name can still take (search bound)",
    f"{TRIE_DIR}/names.parquet": "the KB's names and ids: name_id, name, cuis",
    f"{TRIE_DIR}/meta.json": "trie sizes, eos, tokenizer and KB fingerprints",
}


@dataclass
class BundleContents:
    """What goes into a bundle: the model and trie directories and what the card says of them."""

    model_dir: Path
    trie_dir: Path
    name: str
    origin: dict  # where the weights come from: {"kind": "pipeline" | "training", "run": ..., ...}
    made_from: str  # the same in a sentence, for the card
    recipe: dict  # the pipeline recipe or the training config
    data: list[str]  # one line per data source, for the card
    inputs: dict  # how a (text, span) becomes model input: MentionInputConfig's fields and "max_source_tokens"
    accuracy: dict | None = None  # {model: {split: {"mentions", "acc@1", ...}}} when measured
    k: int = 5  # the accuracy table's acc@k
    command: str = ""  # the command that made the bundle


def _model_files(model_dir: Path) -> list[Path]:
    # The model directory's own files only: a bundle given as the model brings no old trie or card.
    return [p for p in sorted(model_dir.iterdir()) if p.is_file() and p.name not in (BUNDLE_FILE, CARD_FILE)]


def write_bundle(contents: BundleContents, out: str | Path) -> dict:
    """Assemble the bundle at `out` (replacing what is there); returns its manifest."""
    from angel_dist.bundle.card import model_card
    from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint
    from angel_dist.train.export import model_fingerprint
    from angel_dist.trie import Trie

    trie = Trie.load(contents.trie_dir)
    fingerprint = tokenizer_fingerprint(load_tokenizer(contents.model_dir))
    trie.check_tokenizer(fingerprint)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": contents.name,
                "inputs": contents.inputs, "tokenizer_fingerprint": fingerprint,
                "kb_fingerprint": trie.meta.get("kb_fingerprint"),
                "model_fingerprint": model_fingerprint(contents.model_dir), "origin": contents.origin,
                "command": contents.command, "accuracy": contents.accuracy, "files": []}
    with atomic_path(Path(out), directory=True) as tmp:
        for path in _model_files(Path(contents.model_dir)):
            shutil.copy2(path, tmp / path.name)
        shutil.copytree(contents.trie_dir, tmp / TRIE_DIR)
        (tmp / CARD_FILE).write_text(model_card(contents, manifest, _entries(tmp, digest=False)))
        manifest["files"] = _entries(tmp)
        write_json(tmp / BUNDLE_FILE, manifest)
    return manifest


def _entries(directory: Path, digest: bool = True) -> list[dict]:
    out = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        out.append({"path": rel, "bytes": path.stat().st_size, "role": _ROLES.get(rel, "other"),
                    **({"sha256": file_sha256(path)} if digest else {})})
    return out


def is_bundle(directory: str | Path) -> bool:
    return (Path(directory) / BUNDLE_FILE).is_file()


def read_bundle(directory: str | Path, verify: bool = True) -> dict:
    """The manifest of the bundle at `directory`, after checking its format and that every file
    it lists is there with its size (and, with `verify`, its sha256)."""
    directory = Path(directory)
    path = directory / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a linker bundle (no {BUNDLE_FILE}; `angel export` makes one)")
    manifest = read_json(path, "a bundle manifest")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: {manifest.get('format')!r} version {manifest.get('format_version')}, expected "
                         f"{FORMAT!r} version {FORMAT_VERSION}")
    for entry in manifest["files"]:
        file = directory / entry["path"]
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            raise ValueError(f"{file}: missing or not {entry['bytes']} bytes as {BUNDLE_FILE} says; the bundle is "
                             f"damaged or incomplete")
        if verify and file_sha256(file) != entry["sha256"]:
            raise ValueError(f"{file}: sha256 differs from {BUNDLE_FILE}'s; the bundle is damaged")
    return manifest
