"""Ray actor and Serve classes (one file per actor kind)."""
import zs_ray  # noqa: F401  (applies the loopback settings before the actor modules import ray)
