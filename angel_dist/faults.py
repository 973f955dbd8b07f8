"""Fault injection for tests: a process dies once at a chosen point, remembered by a marker file.

The marker lives with the run's outputs, so the rerun that resumes after the crash goes past
the same point instead of dying again.
"""

from __future__ import annotations

import os
from pathlib import Path


def crash_once(marker: Path, message: str, code: int) -> None:
    """Exit with `code` unless `marker` exists; create it first."""
    if marker.exists():
        return
    marker.touch()
    print(f"[angel] {message}", flush=True)
    os._exit(code)
