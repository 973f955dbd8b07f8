"""Models: built from a preset with the project tokenizer, or loaded from a path or the HF cache.

Presets of the seq2seq family carry BART's shapes (`base` and `large` are bart-base and
bart-large), those of the causal family Llama's (`tiny-causal`, `small-causal`, `base-causal`);
both take the tokenizer's vocabulary and special ids, and their weights are freshly initialized
from `seed`. A directory or cached name loads as BART when its config is an encoder-decoder, else
with AutoModelForCausalLM (the family's `load`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from angel_dist.errors import BadInputError
from angel_dist.hf_files import check_hf_directory, read_as
from angel_dist.model.family import CAUSAL, FAMILIES, SEQ2SEQ, Family, family_of, family_of_preset

PRESETS: dict[str, dict] = {name: shape for family in FAMILIES for name, shape in family.presets.items()}


def model_family(spec: str | Path) -> Family:
    """The family of a preset name, a model directory or a cached HF name (its config, never downloaded)."""
    family = family_of_preset(str(spec))
    if family is not None:
        return family
    from transformers import AutoConfig

    check_hf_directory(spec)
    try:
        with read_as(spec, "a model"):
            config = AutoConfig.from_pretrained(str(spec), local_files_only=True)
    except BadInputError:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"{spec!r} is not a preset ({', '.join(PRESETS)}), a model directory or a model in "
                         f"the local Hugging Face cache: {e}") from None
    return SEQ2SEQ if config.is_encoder_decoder else CAUSAL


def _ids(value) -> set:
    return set(value) if isinstance(value, (list, tuple)) else {value}


def load_model(spec: str | Path, tokenizer, seed: int = 0):
    """A model from a preset name, a local directory or a cached HF name."""
    family = model_family(spec)
    if str(spec) in family.presets:
        torch.manual_seed(seed)
        model = family.preset_model(str(spec), tokenizer)
    else:
        try:  # never a download: a local directory or what the HF cache already holds
            with read_as(spec, f"a {family.name} model"):
                model, info = family.load(str(spec))
        except OSError as e:
            raise ValueError(f"{spec!r}: cannot load it as a {family.name} model: {e}") from None
        if info["missing_keys"]:  # transformers would start these from random values, with a warning only
            missing = sorted(info["missing_keys"])
            raise BadInputError(spec, None, f"its weights lack {len(missing)} of the model's tensors "
                                            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    vocab = model.get_input_embeddings().num_embeddings
    if vocab < len(tokenizer):
        raise ValueError(f"model {spec} has {vocab} token embeddings but the tokenizer has {len(tokenizer)} tokens; "
                         "use the model's own tokenizer")
    for name in ("pad_token_id", "eos_token_id"):
        mine, theirs = getattr(model.config, name), getattr(tokenizer, name)
        # A causal model's config may name no pad or several eos ids (chat models).
        if mine is not None and theirs not in _ids(mine):
            raise ValueError(f"model {spec} has {name}={mine}, the tokenizer {theirs}")
    return model


def save_model(model, tokenizer, directory: str | Path) -> None:
    """A model directory: the weights (safetensors) and the tokenizer as the model's family reads text."""
    model.save_pretrained(directory, safe_serialization=True)
    family_of(model).tokenizer(tokenizer).save_pretrained(directory)
