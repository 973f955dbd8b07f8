"""`angel export`: the newest checkpoint of a run as a Hugging Face model directory (safetensors):
BART loads with BartForConditionalGeneration, a causal model with AutoModelForCausalLM."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from angel_dist.atomic import atomic_path
from angel_dist.errors import BadInputError, read_json
from angel_dist.model import load_model, save_model
from angel_dist.tokenizer import load_tokenizer
from angel_dist.train import checkpoint as ckpt


def export_run(run_dir: str | Path, out: str | Path, tag: str | None = None) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from angel_dist.train.partitioned_adamw import whole_master
    from angel_dist.train.safe_load import weights_only_loads
    from angel_dist.train.strategy import MODEL_STATES, partition_files, read_weights

    run = Path(run_dir)
    root = run / "checkpoints"
    tag = tag or ckpt.latest_tag(root)
    if tag is None:
        raise FileNotFoundError(f"{run}: no checkpoint to export")
    config = read_json(run / "train_config.json", "the training configuration")
    tokenizer = load_tokenizer(config["tokenizer"])
    model = load_model(config["model"], tokenizer, tokenizer_name=config["tokenizer"])
    ckpt.verified_meta(root, tag)
    with weights_only_loads():
        if any((root / tag).glob("zero_pp_rank_*")):
            state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        else:  # stage 0 (ddp.json), the strategy's ZeRO-1: the whole model, which zero_to_fp32 does not read
            state = torch.load(root / tag / MODEL_STATES, map_location="cpu")["module"]
    partitions = partition_files(root / tag)
    if partitions:  # the strategy's ZeRO-1: a bf16 run's fp32 values are in its master's slices
        try:
            master = whole_master([read_weights(p, "a slice of the optimizer's moments", "cpu", mmap=True)
                                   for p in partitions], list(model.named_parameters()))
        except ValueError as e:
            raise BadInputError(root / tag, None, str(e)) from None
        state = {**state, **(master or {})}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(model.state_dict()) - set(dict(model.named_parameters()))  # aliases of shared (tied) weights
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {root / tag} does not fit the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    with atomic_path(Path(out), directory=True) as tmp:
        save_model(model.to(torch.float32), tokenizer, tmp)
        (tmp / "angel_export.json").write_text(json.dumps({"run": str(run.resolve()), "checkpoint": tag}, indent=2))
    return Path(out)


def model_directory(spec: str | Path, tag: str | None = None) -> Path:
    """A model directory for inference: `spec` itself, or for a training run directory its
    checkpoint `tag` (default: the newest) exported once to `RUN/export/<tag>`."""
    spec = Path(spec)
    if not (spec / "train_config.json").exists():
        if not spec.is_dir():
            raise FileNotFoundError(f"{spec}: neither a model directory nor a training run directory")
        return spec
    tag = tag or ckpt.latest_tag(spec / "checkpoints")
    if tag is None:
        raise FileNotFoundError(f"{spec}: a training run without a checkpoint")
    if not (spec / "checkpoints" / tag).is_dir():
        raise FileNotFoundError(f"{spec}: no checkpoint {tag!r} in {spec / 'checkpoints'}")
    out = spec / "export" / tag
    if not (out / "angel_export.json").exists():
        export_run(spec, out, tag)
    return out


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the weight files: which weights mined a pair set or produced predictions."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors")) or sorted(Path(model_dir).glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no weight files (*.safetensors)")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
