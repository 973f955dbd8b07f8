"""`angel export`: the newest checkpoint of a run as a Hugging Face model directory (safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from angel_dist.atomic import atomic_path
from angel_dist.model import load_model
from angel_dist.tokenizer import load_tokenizer
from angel_dist.train import checkpoint as ckpt


def export_run(run_dir: str | Path, out: str | Path, tag: str | None = None) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run = Path(run_dir)
    root = run / "checkpoints"
    tag = tag or ckpt.latest_tag(root)
    if tag is None:
        raise FileNotFoundError(f"{run}: no checkpoint to export")
    config = json.loads((run / "train_config.json").read_text())
    tokenizer = load_tokenizer(config["tokenizer"])
    model = load_model(config["model"], tokenizer)
    state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint {root / tag} does not fit the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    with atomic_path(Path(out), directory=True) as tmp:
        model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "angel_export.json").write_text(json.dumps({"run": str(run.resolve()), "checkpoint": tag}, indent=2))
    return Path(out)
