"""zs-ray: Ray-native ZeroSearch — train LLM search agents with a simulated search engine."""
from zs_ray.runtime import apply_loopback_env as _apply_loopback_env

_apply_loopback_env()  # before anything imports ray: a local Ray and vLLM listen on 127.0.0.1 only

__version__ = "0.1.0"
