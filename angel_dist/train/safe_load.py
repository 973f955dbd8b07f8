"""DeepSpeed checkpoints loaded without running code from them.

DeepSpeed 0.19 reads its files with `torch.load(weights_only=False)`, a full unpickler that runs
whatever a crafted file asks for, at some thirty call sites (the engine, ZeRO, universal
checkpoints, zero_to_fp32, ds_to_universal) and has no setting to change that; a custom checkpoint
engine would cover only the engine's own reads. So while DeepSpeed reads a checkpoint,
`weights_only_loads()` puts in torch.load's place a loader that always unpickles with
`weights_only=True` (torch's restricted unpickler: tensors, containers, primitives) plus the
globals DeepSpeed's files need, and names the file it refuses.

What DeepSpeed 0.19.8 pickles besides tensors and containers, found by listing the globals
(`torch.serialization.get_unsafe_globals_in_checkpoint`) of the files it writes for ds_configs/
(stage 0, ZeRO-2, ZeRO-3, ZeRO-3 with offload), in fp32 and in bf16 (on DeepSpeed's CPU
accelerator), and of their universal conversions: ZeRO's stage enum, its static loss scaler and
the fragment addresses of ZeRO-2's parameter slices. Nothing else is let through: a DeepSpeed
that pickles more (fp16's dynamic loss scaler, which ds_config never enables) is refused, naming
the file.

`python -m angel_dist.train.safe_load ARGS` runs DeepSpeed's ds_to_universal (ARGS are its own)
the same way; a refused file exits with status 2 and one line `BAD_INPUT {json}` on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from angel_dist.errors import BadInputError

BAD_INPUT = "BAD_INPUT "


def allowed_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _name(f) -> str:
    return os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", f))


def _reason(error: Exception) -> str:
    """What torch's refusal says about the file, without its advice to load it unrestricted."""
    text = str(error) or type(error).__name__
    _, found, rest = text.partition("WeightsUnpickler error: ")
    return (rest.split(" Please use")[0] if found else text).splitlines()[0][:300]


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within: every torch.load unpickles with weights_only=True and the allow-list above; a file
    that cannot be loaded so raises BadInputError naming it."""
    real = torch.load
    allowed = allowed_globals()

    def load(f, map_location=None, pickle_module=None, *, weights_only=None, **kwargs):
        with torch.serialization.safe_globals(allowed):
            try:
                return real(f, map_location, pickle_module, weights_only=True, **kwargs)
            except (torch.OutOfMemoryError, MemoryError):
                raise
            except Exception as e:  # whatever the bytes made of the unpickler, the file is at fault
                raise BadInputError(_name(f), None, f"not a checkpoint file that loads without running code from "
                                                    f"it ({type(e).__name__}: {_reason(e)})") from e

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


def raise_bad_input(stderr: str) -> None:
    """Raise the BadInputError a `python -m angel_dist.train.safe_load` child reported, if any."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(BAD_INPUT):
            raise BadInputError(*json.loads(line[len(BAD_INPUT):]))


def _convert_to_universal() -> int:
    from deepspeed.checkpoint import ds_to_universal

    try:
        with weights_only_loads():
            ds_to_universal.main(ds_to_universal.parse_arguments())
    except BadInputError as e:
        print(BAD_INPUT + json.dumps([e.path, e.line, e.problem]), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_convert_to_universal())
