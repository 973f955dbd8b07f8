"""Files that ship beside the package (DeepSpeed configs, recipes), wherever it was installed.

In a checkout they are at the repository root; `pip install .` puts copies under
`<prefix>/share/angel-dist/` (pyproject's data-files).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def find_resource(path: str | Path) -> Path:
    """`path` itself if it exists, else the same relative path in the checkout or the install."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    for base in (_ROOT, Path(sys.prefix) / "share" / "angel-dist"):
        if (base / path).exists():
            return base / path
    raise FileNotFoundError(f"{path}: not found here, in {_ROOT} or in {Path(sys.prefix) / 'share' / 'angel-dist'}")
