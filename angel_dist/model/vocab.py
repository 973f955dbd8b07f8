"""A model and its tokenizer: which tokenizer a checkpoint brings, and whether a tokenizer fits it.

A checkpoint (a model directory, or a name in the local Hugging Face cache) learned the ids of the
tokenizer it was trained with. Paired with another one it would train and search on ids that name
other tokens, and nothing would fail: any id below its embedding table's size is a valid input.
So a checkpoint brings its own tokenizer unless told otherwise, and a tokenizer given beside it is
refused, naming both, unless it is that tokenizer (same fingerprint) or, for weights saved
without a tokenizer, one whose size and special ids agree with the checkpoint's config. Presets
are built with the tokenizer they are given, so every tokenizer fits them.
"""

from __future__ import annotations

from pathlib import Path

from angel_dist.errors import BadInputError
from angel_dist.hf_files import check_hf_directory, read_as
from angel_dist.model.family import family_of_preset
from angel_dist.tokenizer import load_tokenizer, tokenizer_fingerprint

# Embedding tables are often padded past the tokenizer to a multiple of 64 or 128 rows for GPU
# kernels, some by a few hundred (Qwen2.5: 151,936 rows for 151,665 tokens). A table larger than
# this, beside a tokenizer saved without one, is another vocabulary, not padding.
PADDING_ROWS = 1024


def is_checkpoint(model: str | Path) -> bool:
    """Whether `model` names a checkpoint (a directory or cached name) rather than a preset."""
    return family_of_preset(str(model)) is None


def load_config(model: str | Path):
    """A checkpoint's config (never downloaded): ValueError when there is none."""
    from transformers import AutoConfig

    check_hf_directory(model)
    try:
        with read_as(model, "a model"):
            return AutoConfig.from_pretrained(str(model), local_files_only=True)
    except BadInputError:
        raise
    except (OSError, ValueError) as e:
        from angel_dist.model.family import FAMILIES

        presets = ", ".join(name for family in FAMILIES for name in family.presets)
        raise ValueError(f"{model!r} is not a preset ({presets}), a model directory or a model in the local "
                         f"Hugging Face cache: {e}") from None


def own_tokenizer(model: str | Path):
    """The tokenizer checkpoint `model` was saved with, or None when its files hold none."""
    if not is_checkpoint(model):
        return None
    try:
        return load_tokenizer(model)
    except BadInputError:  # tokenizer files that are there but damaged: say so
        raise
    except (ValueError, OSError):
        return None


def tokenizer_of(model: str | Path, tokenizer: str | Path | None = None) -> str | None:
    """Where the tokenizer a model is used with comes from: `tokenizer` when given, else the
    checkpoint's own (its directory or cached name; ValueError when it saved none), else None: a
    preset, built with whatever tokenizer it is given."""
    if tokenizer:
        return str(tokenizer)
    if not is_checkpoint(model):
        return None
    if own_tokenizer(model) is None:
        raise ValueError(f"model {model} holds no tokenizer files; give the tokenizer it was trained with "
                         f"(tokenizer.path in a recipe, --tokenizer on the command line)")
    return str(model)


def located(name: str | Path) -> str:
    """A model or tokenizer named by a local path, made absolute (ranks and actors on other nodes,
    in other working directories, read it); a preset or a name of the Hugging Face cache as it is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if is_checkpoint(name) and path.exists() else str(name)


def _ids(value) -> set:
    return set(value) if isinstance(value, (list, tuple)) else {value}


def fit_problems(config, tokenizer, own=None) -> list[str]:
    """What keeps `tokenizer` from being the one a checkpoint with `config` learned ([] when it
    fits); `own`: the tokenizer the checkpoint brings, if any."""
    rows, n = config.get_text_config().vocab_size, len(tokenizer)
    problems = []
    if own is not None and tokenizer_fingerprint(own) != tokenizer_fingerprint(tokenizer):
        problems.append(f"the model brings its own tokenizer ({len(own)} tokens, fingerprint "
                        f"{tokenizer_fingerprint(own)}), and this is another one (fingerprint "
                        f"{tokenizer_fingerprint(tokenizer)})")
    if n > rows:
        problems.append(f"the tokenizer's ids reach {n - 1}, past the model's {rows} token embeddings")
    elif own is None and rows - n > PADDING_ROWS:
        problems.append(f"the model's {rows} token embeddings are {rows - n} more than the tokenizer's {n} "
                        f"tokens: another vocabulary")
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        mine, theirs = getattr(config, name, None), getattr(tokenizer, name)
        # A tokenizer without a pad (Llama's) pads with its eos; a config may list several eos ids (chat models).
        if mine is not None and theirs is not None and theirs not in _ids(mine):
            problems.append(f"the model's {name} is {mine}, the tokenizer's {theirs}")
    start = getattr(config, "decoder_start_token_id", None)
    if config.is_encoder_decoder and start is not None and not 0 <= start < n:
        problems.append(f"the model's decoder_start_token_id {start} is no id of the tokenizer's {n}")
    return problems


def check_fits(model: str | Path, tokenizer, tokenizer_name: str | Path, config=None) -> None:
    """ValueError naming both when `tokenizer` (loaded from `tokenizer_name`) is not one checkpoint
    `model` was trained with (see fit_problems); nothing to check for a preset."""
    if not is_checkpoint(model):
        return
    config = config if config is not None else load_config(model)
    same = Path(str(tokenizer_name)).expanduser().resolve() == Path(str(model)).expanduser().resolve() \
        or str(tokenizer_name) == str(model)
    problems = fit_problems(config, tokenizer, None if same else own_tokenizer(model))
    if problems:
        raise ValueError(f"model {model} ({config.get_text_config().vocab_size} token embeddings) does not fit "
                         f"tokenizer {tokenizer_name} ({len(tokenizer)} tokens): {'; '.join(problems)}. Use the "
                         f"model's own tokenizer (leave tokenizer.path empty, or give --tokenizer {model})")


def check_pair(model: str | Path, tokenizer_name: str | Path) -> None:
    """check_fits with the tokenizer at `tokenizer_name`: what a driver runs before any stage or
    rank starts."""
    if is_checkpoint(model):
        check_fits(model, load_tokenizer(tokenizer_name), tokenizer_name)
