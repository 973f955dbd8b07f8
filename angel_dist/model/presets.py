"""Models: built from a preset with the project tokenizer, or loaded from a path or the HF cache.

Presets of the seq2seq family carry BART's shapes (`base` and `large` are bart-base and
bart-large), those of the causal family Llama's (`tiny-causal`, `small-causal`, `base-causal`);
both take the tokenizer's vocabulary and special ids, and their weights are freshly initialized
from `seed`. A directory or cached name loads as BART when its config is an encoder-decoder, else
with AutoModelForCausalLM (the family's `load`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from angel_dist.errors import BadInputError
from angel_dist.hf_files import read_as
from angel_dist.model.family import CAUSAL, FAMILIES, SEQ2SEQ, Family, family_of, family_of_preset
from angel_dist.model.vocab import check_fits, load_config

PRESETS: dict[str, dict] = {name: shape for family in FAMILIES for name, shape in family.presets.items()}


def model_family(spec: str | Path) -> Family:
    """The family of a preset name, a model directory or a cached HF name (its config, never downloaded)."""
    family = family_of_preset(str(spec))
    if family is not None:
        return family
    return SEQ2SEQ if load_config(spec).is_encoder_decoder else CAUSAL


def load_model(spec: str | Path, tokenizer, seed: int = 0, dtype: torch.dtype = torch.float32,
               zero3: dict | None = None, tokenizer_name: str | Path | None = None):
    """A model from a preset name, a local directory or a cached HF name, its parameters in `dtype`
    (floating buffers stay fp32, as DeepSpeed's mixed precision keeps them). A checkpoint is read
    straight into `dtype` (transformers builds it empty, then fills it from the memory-mapped
    safetensors), and with `zero3`, a DeepSpeed ZeRO-3 config, each rank materializes only its
    partition (deepspeed.zero.Init): no process holds a full fp32 copy it does not need. A preset
    is built whole from `seed` and cast. `tokenizer_name` (default: `spec` itself) is what
    `check_fits` names: a tokenizer that is not the checkpoint's is refused."""
    family = model_family(spec)
    if str(spec) in family.presets:
        torch.manual_seed(seed)
        model = family.preset_model(str(spec), tokenizer)
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)
    else:
        config = load_config(spec)
        check_fits(spec, tokenizer, tokenizer_name or spec, config)
        try:  # never a download: a local directory or what the HF cache already holds
            with read_as(spec, f"a {family.name} model"), _zero3_loading(zero3):
                model, info = family.load(str(spec), dtype)
        except OSError as e:
            raise ValueError(f"{spec!r}: cannot load it as a {family.name} model: {e}") from None
        if info["missing_keys"]:  # transformers would start these from random values, with a warning only
            missing = sorted(info["missing_keys"])
            raise BadInputError(spec, None, f"its weights lack {len(missing)} of the model's tensors "
                                            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.data = buffer.data.float()
    return model


@contextmanager
def _zero3_loading(config: dict | None) -> Iterator[None]:
    """While transformers loads a checkpoint: with a ZeRO-3 `config`, the integration object whose
    existence makes `from_pretrained` build the model under deepspeed.zero.Init and load each
    partition in place (transformers keeps only a weak reference to it, hence the block)."""
    if config is None:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(config)
    try:
        yield
    finally:
        del keep


def save_model(model, tokenizer, directory: str | Path) -> None:
    """A model directory: the weights (safetensors) and the tokenizer as the model's family reads text."""
    model.save_pretrained(directory, safe_serialization=True)
    family_of(model).tokenizer(tokenizer).save_pretrained(directory)
