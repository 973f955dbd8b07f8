from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is absent")
