"""Shared, expensive fixtures: one Ray instance and one set of tiny models for the whole session."""
import os

import pytest

from zs_ray.runtime import apply_local_env

apply_local_env(os.environ.get("ZS_RAY_HOME", "/tmp/zs_ray_test_home"))

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
SHARED_DATA = os.path.join(SHARED, "data")


def shared_path(*parts: str) -> str:
    """Path under ../shared/data; skips the test with a reason when it is absent."""
    p = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(p):
        pytest.skip(f"real data not available: {p} (../shared is absent on this machine)")
    return p


@pytest.fixture
def shared_data():
    return shared_path


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Tokenizer + tiny random Llama (HF format, safetensors)."""
    from zs_ray.world.tiny_models import build_test_assets

    return build_test_assets(str(tmp_path_factory.mktemp("assets")))


@pytest.fixture(scope="session")
def ray_session():
    """One loopback-only local Ray for all integration tests (oversubscribed on purpose: CPUs are bookkeeping)."""
    import ray

    from zs_ray.runtime import init_ray

    init_ray(num_cpus=8)
    yield ray
    try:
        from ray import serve
        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()

