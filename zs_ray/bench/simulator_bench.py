"""Simulator throughput: documents/s with 64 concurrent callers vs one call at a time.

    python -m zs_ray.bench.simulator_bench [--model DIR] [--calls 64] [--max-tokens 80]

Without --model it builds a tiny random simulator (it writes few `Doc i:` blocks, so the generated
TOKENS/s is printed too: that is what batching speeds up). Starts a loopback Ray + Serve of its own.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--calls", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=80)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--port", type=int, default=0, help="Serve HTTP port (0: a free one)")
    args = ap.parse_args()

    from zs_ray.runtime import apply_local_env, init_ray
    apply_local_env(tempfile.mkdtemp(prefix="zs_sim_bench_"))
    model = args.model
    if model is None:
        from zs_ray.world.tiny_models import build_test_assets, make_tiny_model
        d = tempfile.mkdtemp(prefix="zs_sim_bench_assets_")
        # size "simulator" (head_dim 32): vLLM's CPU attention has no kernel for the "test" size's head_dim 16
        model = make_tiny_model(build_test_assets(d)["tokenizer"], os.path.join(d, "sim"), size="simulator")
    port = args.port
    if not port:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    init_ray(num_cpus=4)
    from actors.simulator import deploy_simulator, shutdown
    from zs_ray.search.clients import SimulatorSearch

    cfg = dict(max_tokens=args.max_tokens, max_model_len=512, max_batch_size=64,
               http_port=port, temperature=0.8)
    t = time.perf_counter()
    handle = deploy_simulator(cfg, model, name="bench_simulator")
    print(f"deploy: {time.perf_counter() - t:.1f} s")
    client = SimulatorSearch(handle, topk=args.k, timeout_s=300)
    queries = [(f"capital of country {i}", f"What is the capital of country {i}?", [f"city{i}"]) for i in range(args.calls)]

    async def concurrent():
        return await asyncio.gather(*[client.search(q, qq, a, call_key=str(i)) for i, (q, qq, a) in enumerate(queries)])

    async def sequential():
        return [await client.search(q, qq, a, call_key=str(i)) for i, (q, qq, a) in enumerate(queries)]

    asyncio.run(client.search("warm up", "warm up?", ["x"]))
    out = {}
    for name, fn in (("sequential", sequential), ("concurrent", concurrent)):
        t = time.perf_counter()
        res = asyncio.run(fn())
        dt = time.perf_counter() - t
        docs = sum(len(r.docs) for r in res)
        out[name] = dict(s=dt, calls_s=len(res) / dt, docs_s=docs / dt, docs=docs, failed=sum(r.failed for r in res))
        print(f"{name:>10}: {len(res)} calls in {dt:.2f} s -> {len(res) / dt:.1f} calls/s, {docs / dt:.1f} docs/s "
              f"({docs} docs, {out[name]['failed']} failed)")
    print("server batches:", handle.stats.remote().result())
    print(f"concurrent / sequential speed-up: {out['concurrent']['calls_s'] / out['sequential']['calls_s']:.1f}x calls/s")
    shutdown("bench_simulator")


if __name__ == "__main__":
    main()
