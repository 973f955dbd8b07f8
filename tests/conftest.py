from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is absent")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, bound to loopback, stopped at the end."""
    import ray

    from angel_dist.ray_env import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()
