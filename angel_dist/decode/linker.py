"""A loaded linker: model + trie + name table -> the top-k KB names of examples, with CUIs.

What mining, evaluation, `angel link`, `angel annotate` and `angel serve` share. Text with
mention spans becomes model input through the benchmark corpora's own function
(`corpus.mention_examples.mention_inputs`), with the input settings and length the model was
trained with (a bundle records them). The trie's arrays stay memory-mapped (one copy per node in the
page cache, however many actors open them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from angel_dist.allocator import retain_freed_memory
from angel_dist.corpus.encode import MAX_SOURCE_TOKENS, Encoded, encode_examples
from angel_dist.corpus.example import unmark
from angel_dist.corpus.mention_examples import MentionInputConfig, mention_inputs
from angel_dist.corpus.pubtator import Document, Mention
from angel_dist.decode.beam import BeamSearch, SearchStats, Stop
from angel_dist.model import load_model
from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint
from angel_dist.trie import Trie


@dataclass(frozen=True)
class Prediction:
    rank: int  # 1-based
    name: str
    cuis: tuple[str, ...]
    score: float  # log-prob / tokens, the beam ranking score
    logp: float


def as_json(text: str, start: int, end: int, predictions: list[Prediction]) -> dict:
    """One linked mention as `angel link --json`, `angel annotate` and `angel serve` write it."""
    return {"mention": text[start:end], "start": start, "end": end, "names": [p.name for p in predictions],
            "ids": [list(p.cuis) for p in predictions], "scores": [p.score for p in predictions]}


def spans_problem(text, spans, max_spans: int | None = None) -> str | None:
    """What is wrong with `text` and `spans` (from JSON) as a text and its mention spans, or None:
    a string of valid Unicode, and a list of [start, end] character offsets with
    0 <= start < end <= len(text), each covering more than whitespace."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's \ud800 escapes decode to unpaired surrogates
        return f"text is not valid Unicode ({e.reason} at character {e.start})"
    if not isinstance(spans, list):
        return f"spans must be a list of [start, end] pairs, got {type(spans).__name__}"
    if max_spans is not None and len(spans) > max_spans:
        return f"at most {max_spans} spans per text, got {len(spans)}"
    for i, span in enumerate(spans):
        if not (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span)):
            return f"spans[{i}] must be [start, end] with integer offsets"
        start, end = span
        if not 0 <= start < end <= len(text):
            return f"spans[{i}] = [{start}, {end}]: need 0 <= start < end <= {len(text)} (the text's length)"
        if not text[start:end].strip():
            return f"spans[{i}] = [{start}, {end}] covers only whitespace"
    return None


def text_document(text: str, spans: Sequence[tuple[int, int]], key: str = "") -> Document:
    """A plain text and its mention spans as the Document the input function reads."""
    return Document(key, title=text, mentions=[Mention(s, e, text[s:e], "", "", 0) for s, e in spans])


def linker_files(model: str | Path, trie: str | Path | None = None, verify: bool = True) -> dict:
    """Linker arguments for `--model` (a bundle, a model directory or a training run directory)
    and `--trie` (default: the bundle's): the model and trie directories, and a bundle's input
    settings. A bundle is checked against its manifest first."""
    from angel_dist.bundle import TRIE_DIR, is_bundle, read_bundle
    from angel_dist.train.export import model_directory

    if is_bundle(model):
        inputs = read_bundle(model, verify)["inputs"]
        return {"model_dir": str(model), "trie_dir": str(trie or Path(model) / TRIE_DIR),
                "inputs": {k: v for k, v in inputs.items() if k != "max_source_tokens"},
                "max_source_tokens": inputs["max_source_tokens"]}
    if trie is None:
        raise ValueError(f"{model} is not a linker bundle (no bundle.json): give the trie (--trie DIR), or make a "
                         f"bundle with `angel export`")
    return {"model_dir": str(model_directory(model)), "trie_dir": str(trie)}


def pick_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Linker:
    def __init__(self, model_dir: str | Path, trie_dir: str | Path, beams: int = 10, batch_size: int = 32,
                 device: str | None = None, tokenizer: str | Path | None = None, inputs: dict | None = None,
                 max_source_tokens: int = MAX_SOURCE_TOKENS, stop: Stop = "exact", temperature: float = 1.0):
        """`inputs`: a bundle's recorded input settings (MentionInputConfig's fields; GenBioEL's
        defaults when None)."""
        self.tokenizer = load_tokenizer(tokenizer or model_dir)
        self.fingerprint = tokenizer_fingerprint(self.tokenizer)
        self.device = pick_device(device)
        if self.device.type == "cpu":
            retain_freed_memory()  # each search step allocates [rows, vocabulary] logits anew
        self.trie = Trie.load(trie_dir)
        self.trie.check_tokenizer(self.fingerprint)
        # bf16 where the GPU has it, read from the checkpoint as such, with fp32 buffers, as training
        # runs it (so mining's reference log-probs are training's); fp32 on CPU.
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = load_model(model_dir, self.tokenizer, dtype=dtype,
                                tokenizer_name=tokenizer or model_dir).to(self.device).eval()
        table = self.trie.names()
        self._names, self._cuis = table["name"], table["cuis"]
        self.beams = beams
        self.search = BeamSearch(self.model, self.trie, beams=beams, batch_size=batch_size, stop=stop,
                                 temperature=temperature)
        self.inputs = MentionInputConfig.from_record(inputs) if inputs is not None else MentionInputConfig()
        self.max_source_tokens = max_source_tokens

    @classmethod
    def from_bundle(cls, directory: str | Path, verify: bool = True, **options) -> "Linker":
        """The linker of a bundle (`angel export`): its model, trie and input settings, after
        checking its files against its manifest (sizes; sha256 too with `verify`)."""
        from angel_dist.bundle import is_bundle

        if not is_bundle(directory):
            raise FileNotFoundError(f"{directory}: not a linker bundle (no bundle.json); `angel export` makes one")
        return cls(**linker_files(directory, verify=verify), **options)

    def predict(self, sources: list[np.ndarray], prefixes: list[np.ndarray],
                stats: SearchStats | None = None) -> list[list[Prediction]]:
        found = self.search.search(sources, prefixes, stats)
        ids = [h.name_id for hyps in found for h in hyps]
        names = self._names.take(ids).to_pylist() if ids else []
        cuis = self._cuis.take(ids).to_pylist() if ids else []
        out, i = [], 0
        for hyps in found:
            row = []
            for rank, h in enumerate(hyps, 1):
                row.append(Prediction(rank, names[i], tuple(cuis[i]), h.score, h.logp))
                i += 1
            out.append(row)
        return out

    def encode(self, documents: Sequence[Document]) -> list[Encoded]:
        """Model inputs of every mention of each document, in order."""
        examples = [e for doc in documents for e in mention_inputs(doc, doc.mentions, self.inputs)]
        return encode_examples(examples, self.tokenizer, self.max_source_tokens)

    def link_documents(self, documents: Sequence[Document]) -> list[list[list[Prediction]]]:
        """The top names of every mention of each document, from one search over them all."""
        encoded = self.encode(documents)
        found = self.predict([e.source_ids for e in encoded], [e.prefix_ids for e in encoded]) if encoded else []
        out, i = [], 0
        for doc in documents:
            out.append(found[i:i + len(doc.mentions)])
            i += len(doc.mentions)
        return out

    def link(self, texts: Sequence[str]) -> list[list[Prediction]]:
        """The top names for each text marking its one mention as `START mention END`."""
        if isinstance(texts, str):
            raise TypeError("link() takes a list of texts")
        documents = [text_document(plain, [span]) for plain, span in map(unmark, texts)]
        return [found[0] for found in self.link_documents(documents)]

    def name_ids(self, names: list[str]) -> list[np.ndarray]:
        """`tok(" " + name) + [eos]` of each name: the trie's token form."""
        from angel_dist.trie.build import encode_names

        flat, lengths = encode_names(names, self.tokenizer, self.tokenizer.eos_token_id, progress=False)
        return np.split(flat, np.cumsum(lengths)[:-1]) if len(names) else []
