"""BART models: built from a preset with the project tokenizer, or loaded from a path or the HF cache.

Presets carry BART's shapes (`base` and `large` are bart-base and bart-large) with the
tokenizer's vocabulary and special ids; their weights are freshly initialized from `seed`.
"""

from __future__ import annotations

from pathlib import Path

import torch

PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256),
    "small": dict(d_model=256, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "large": dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                  decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
}


def preset_config(name: str, tokenizer):
    from transformers import BartConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    return BartConfig(vocab_size=len(tokenizer), max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.eos_token_id, forced_bos_token_id=None,
                      forced_eos_token_id=tokenizer.eos_token_id, **PRESETS[name])


def load_model(spec: str | Path, tokenizer, seed: int = 0):
    """A BartForConditionalGeneration from a preset name, a local directory or a cached HF name."""
    from transformers import BartForConditionalGeneration

    if str(spec) in PRESETS:
        torch.manual_seed(seed)
        model = BartForConditionalGeneration(preset_config(str(spec), tokenizer))
    else:
        try:  # never a download: a local directory or what the HF cache already holds
            model = BartForConditionalGeneration.from_pretrained(str(spec), local_files_only=True)
        except OSError as e:
            raise ValueError(f"{spec!r} is not a preset ({', '.join(PRESETS)}), a model directory or a model in "
                             f"the local Hugging Face cache: {e}") from None
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < len(tokenizer):
        raise ValueError(f"model {spec} has {vocab} token embeddings but the tokenizer has {len(tokenizer)} tokens; "
                         "use the model's own tokenizer")
    for name in ("pad_token_id", "eos_token_id"):
        mine, theirs = getattr(model.config, name), getattr(tokenizer, name)
        if mine != theirs:
            raise ValueError(f"model {spec} has {name}={mine}, the tokenizer {theirs}")
    return model
