"""Linker bundles: the HF model and tokenizer, the trie with the KB's names and ids, a model card
and a manifest, in one directory that links by itself (`Linker.from_bundle`, `angel link --model
DIR`, `angel annotate`, `angel serve`). Layout in `layout.py`."""

from __future__ import annotations

from pathlib import Path

from angel_dist.bundle.layout import BUNDLE_FILE, TRIE_DIR, BundleContents, is_bundle, read_bundle, write_bundle
from angel_dist.bundle.sources import command_line, pipeline_contents, training_contents

__all__ = ["BUNDLE_FILE", "TRIE_DIR", "BundleContents", "export_bundle", "is_bundle", "read_bundle", "write_bundle",
           "command_line", "pipeline_contents", "training_contents"]


def export_bundle(run_dir: str | Path, out: str | Path, trie: str | Path | None = None,
                  tag: str | None = None) -> dict:
    """`angel export`: the bundle of a pipeline run (everything from its run.json) or of a
    training run (its newest or `tag` checkpoint, with `trie`); returns the manifest. The card
    records this process's command line as the command that made it."""
    from angel_dist.pipeline.state import RUN_FILE

    run = Path(run_dir)
    if (run / RUN_FILE).exists():
        if tag is not None or trie is not None:
            raise ValueError(f"{run} is a pipeline run: its model and trie come from its run.json (no --tag, --trie)")
        contents = pipeline_contents(run, command=command_line())
    elif (run / "train_config.json").exists():
        contents = training_contents(run, trie, tag, command_line())
    else:
        raise FileNotFoundError(f"{run}: neither a pipeline run (run.json) nor a training run (train_config.json)")
    return write_bundle(contents, out)
