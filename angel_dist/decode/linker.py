"""A loaded linker: model + trie + name table -> the top-k KB names of examples, with CUIs.

What mining, evaluation and `angel link` share. The trie's arrays stay memory-mapped (one
copy per node in the page cache, however many actors open them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from angel_dist.allocator import retain_freed_memory
from angel_dist.decode.beam import BeamSearch, SearchStats
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


def pick_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Linker:
    def __init__(self, model_dir: str | Path, trie_dir: str | Path, beams: int = 10, batch_size: int = 32,
                 device: str | None = None, tokenizer: str | Path | None = None):
        self.tokenizer = load_tokenizer(tokenizer or model_dir)
        self.fingerprint = tokenizer_fingerprint(self.tokenizer)
        self.device = pick_device(device)
        if self.device.type == "cpu":
            retain_freed_memory()  # each search step allocates [rows, vocabulary] logits anew
        self.trie = Trie.load(trie_dir)
        self.trie.check_tokenizer(self.fingerprint)
        # bf16 where the GPU has it (as training), fp32 on CPU.
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = load_model(model_dir, self.tokenizer).to(self.device, dtype).eval()
        table = self.trie.names()
        self._names, self._cuis = table["name"], table["cuis"]
        self.search = BeamSearch(self.model, self.trie, beams=beams, batch_size=batch_size)

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

    def link(self, text: str) -> list[Prediction]:
        """The top names for one text marking its mention as `START mention END`."""
        from angel_dist.corpus.encode import encode_examples
        from angel_dist.corpus.example import END, START, Example

        words = text.split()
        if words.count(START) != 1 or words.count(END) != 1 or words.index(START) > words.index(END) - 2:
            raise ValueError(f"mark exactly one mention as '... {START} mention {END} ...', got {text!r}")
        mention = " ".join(words[words.index(START) + 1:words.index(END)])
        source = " ".join(words)
        begin = source.index(f"{START} ") + len(START) + 1
        example = Example(key="link", group="link", source=source, prefix=f"{mention} is", target="", cuis=[],
                          kind="mention", mention_span=(begin, begin + len(mention)), keep="around")
        encoded = encode_examples([example], self.tokenizer)[0]
        return self.predict([encoded.source_ids], [encoded.prefix_ids])[0]

    def name_ids(self, names: list[str]) -> list[np.ndarray]:
        """`tok(" " + name) + [eos]` of each name: the trie's token form."""
        from angel_dist.trie.build import encode_names

        flat, lengths = encode_names(names, self.tokenizer, self.tokenizer.eos_token_id, progress=False)
        return np.split(flat, np.cumsum(lengths)[:-1]) if len(names) else []
