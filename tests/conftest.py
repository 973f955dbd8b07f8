from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is absent")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, bound to loopback, stopped at the end."""
    import ray

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
