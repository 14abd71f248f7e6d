"""`zs-ray bench`: the framework's measured figures (runner), their models and CPU accounting (assets), the
report (report), and the stand-alone benchmarks it reuses (reference_loop, rollout_bench, simulator_bench)."""
