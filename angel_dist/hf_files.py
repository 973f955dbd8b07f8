"""A local Hugging Face directory's files parsed before transformers reads them.

transformers and tokenizers report a damaged JSON or safetensors file without its name (a bare
UnicodeDecodeError, "header too large"); an exported model or a bundle copied between machines
can be truncated or crafted, so each file is opened here first and a bad one is named.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from angel_dist.errors import BadInputError, read_json


def check_hf_directory(spec: str | Path) -> None:
    """Raise BadInputError naming the first JSON or safetensors file of directory `spec` that does
    not parse; a preset or a cached name (not a directory) is left to transformers."""
    directory = Path(spec)
    if not directory.is_dir():
        return
    from safetensors import SafetensorError, safe_open

    for path in sorted(directory.glob("*.json")):
        read_json(path, "a Hugging Face model or tokenizer file")
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except SafetensorError as e:
            raise BadInputError(path, None, f"not a safetensors file: {e}") from None


@contextmanager
def read_as(spec: str | Path, what: str):
    """Around transformers reading local directory `spec` (after check_hf_directory): whatever it
    raises on files that parse but do not describe `what` (a KeyError, a config field's type
    error) becomes a BadInputError naming the directory."""
    try:
        yield
    except (BadInputError, OSError):
        raise
    except Exception as e:
        if not Path(spec).is_dir():
            raise
        raise BadInputError(spec, None, f"not {what} transformers can read: {type(e).__name__}: {e}") from None
