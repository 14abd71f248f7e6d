"""`zs-ray bench [--quick]`: the framework's figures, each a RATIO of two things measured in the same run.

The machines are shared and noisy, so no figure is an absolute timing: each compares two variants run
alternately (A, B, B, A, ...) several times, and the median of the per-pair ratios is reported.

1. rollout with search: zs-ray's rollout (vLLM, one coroutine per trajectory, stop strings, Serve simulator)
   vs the reference-style loop of zs_ray/bench/reference_loop.py (sampled tokens kept per second)
2. a training step with staleness 1 vs 0 (wall time per step, one Trainer, alternating segments)
3. the Serve simulator: 64 concurrent callers vs one call at a time (documents/s)
4. weight sync as a fraction of the step (time/sync / time/step of the trainer)
5. the quickstart: peak RSS of its whole process tree (incl. Ray workers) and wall time
6. scaling: rollout throughput with 1/2/4 rollout workers; step time with 1/2 policy workers

Models: figure 5's quickstart (full preset) or `--models DIR`; else the bench's own (zs_ray/bench/assets.py).
"""
from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Optional

from zs_ray.bench.assets import cpu_busy_s, cpu_by_process, measure_quickstart, prepare
from zs_ray.bench.report import Row, log_mlflow, machine, markdown, paired, table, write_section
from zs_ray.paths import default_config, project_root
from zs_ray.runtime import free_port

PRESETS = {
    "quick": dict(entities=60, policy_sft=100, sim_sft=60, prompts=8, reps=3, scale_reps=2, steps=3, stale_reps=2,
                  seq_calls=12, quickstart="smoke", quickstart_timeout_s=900, models_from_quickstart=False),
    "full": dict(entities=200, policy_sft=150, sim_sft=200, prompts=16, reps=5, scale_reps=3, steps=4, stale_reps=3,
                 seq_calls=32, quickstart="full", quickstart_timeout_s=1800, models_from_quickstart=True),
}


# ------------------------------------------------------------------ the Ray part
class Bench:
    def __init__(self, work: str, p: dict, paths: dict, cfg, log=print):
        import ray

        from zs_ray.runtime import init_ray

        self.work, self.p, self.paths, self.cfg, self.log = work, p, paths, cfg, log
        self.device = cfg.resources.device
        init_ray(num_cpus=8)
        from actors.simulator import deploy_simulator
        from zs_ray.config import to_dict
        from zs_ray.data.qa import load_dataset_files

        self.rollout_cfg = to_dict(cfg.rollout)
        s = to_dict(cfg.search)
        # One engine batch must hold every trajectory's search of a turn (the config is sized for the
        # quickstart's 8 prompts x 5): a smaller batch splits a turn's searches into two waves.
        n_traj = p["prompts"] * int(cfg.rollout.n_samples)
        if n_traj > int(s["max_batch_size"]):
            s["kv_cache_gb"] = float(s["kv_cache_gb"]) * n_traj / int(s["max_batch_size"])
            s["max_batch_size"] = n_traj
        self.sim_cfg = {**s, "http_port": free_port(), "app_name": "bench_sim"}
        self.handle = deploy_simulator(self.sim_cfg, paths["simulator"], name="bench_sim", route_prefix="/bench_sim",
                                       num_gpus=cfg.resources.gpus_per_simulator)
        self.rows = load_dataset_files([f"{paths['world']}/world/train.parquet"], split="train")[: p["prompts"]]
        self.ray = ray
        self.details: dict = {}

    def search(self, share_identical: Optional[bool] = None):
        """The rollout's simulator client as configured (search.share_identical), or as asked."""
        from zs_ray.search.clients import SimulatorSearch

        share = bool(self.sim_cfg["share_identical"] if share_identical is None else share_identical)
        return SimulatorSearch(self.handle, mode=self.sim_cfg["backend"], topk=int(self.sim_cfg["topk"]), timeout_s=300,
                               share_identical=share)

    # -------------------------------------------------------------- 3. simulator concurrency
    def simulator(self) -> Row:
        client = self.search(share_identical=False)  # its 64 calls repeat 8 questions: each must be written
        qs = [(f"{r['question']}", r["question"], ["x"]) for r in self.rows]
        calls = [qs[i % len(qs)] for i in range(64)]

        async def run(n_calls, concurrent):
            jobs = [client.search(q, qq, a, call_key=str(i)) for i, (q, qq, a) in enumerate(calls[:n_calls])]
            if concurrent:
                return await asyncio.gather(*jobs)
            return [await j for j in jobs]

        def docs_per_s(n_calls, concurrent):
            t = time.perf_counter()
            res = asyncio.run(run(n_calls, concurrent))
            return sum(len(r.docs) for r in res) / (time.perf_counter() - t)
        docs_per_s(8, True)  # warm-up
        seq, conc = [], []
        for rep in range(self.p["reps"]):
            order = [(conc, 64, True), (seq, self.p["seq_calls"], False)]
            for out, n, c in (order if rep % 2 == 0 else order[::-1]):
                out.append(docs_per_s(n, c))
        o, b, r = paired(conc, seq)
        self.details["simulator docs/s (64 concurrent, sequential)"] = [[round(x, 1) for x in conc],
                                                                       [round(x, 1) for x in seq]]
        return Row("3. simulator, 64 concurrent callers vs 1 at a time", o, b, r, ">= 8", "docs/s",
                   f"{self.paths['source']}, topk {self.sim_cfg['topk']}, "
                   f"max_tokens {self.sim_cfg['max_tokens']}, engine batch {self.sim_cfg['max_batch_size']}")

    # -------------------------------------------------------------- 1. rollout vs the reference loop
    def rollout(self) -> list[Row]:
        import torch
        from transformers import AutoModelForCausalLM

        from zs_ray.bench import reference_loop as ref
        from zs_ray.bench.rollout_bench import summarize
        from zs_ray.core.rollout import run_rollouts
        from zs_ray.engines.engine import make_engine
        rc, n = self.rollout_cfg, int(self.rollout_cfg["n_samples"])
        # rollout.gpu_memory_utilization: on a GPU this engine stays up beside the trainer's of figures 2/4
        engine = make_engine(rc["engine"], self.paths["policy"], max_model_len=rc["max_context_tokens"], seed=0,
                             kv_cache_gb=rc["kv_cache_gb"], max_num_seqs=128, device=self.device,
                             gpu_memory_utilization=rc["gpu_memory_utilization"])
        model = AutoModelForCausalLM.from_pretrained(self.paths["policy"], dtype=torch.float32,
                                                     use_safetensors=True).to(self.device).eval()
        search = self.search()

        def ours(rep):
            t = time.perf_counter()
            trajs = [x.to_dict() for x in asyncio.run(run_rollouts(
                engine, search, self.rows, n, rollout_cfg=rc, step=rep, seed=rep))]
            s = summarize(trajs, time.perf_counter() - t)
            self.last_trajs = trajs
            return s["sampled_tokens"] / s["wall_s"], s

        def baseline(rep):
            t = time.perf_counter()
            trajs = ref.reference_rollout(model, engine.tokenizer, self.handle.simulate, self.rows, n,
                                          max_turns=rc["max_turns"], max_turn_tokens=rc["max_turn_tokens"],
                                          temperature=rc["temperature"], top_p=rc["top_p"],
                                          topk=int(self.sim_cfg["topk"]), mode=self.sim_cfg["backend"], seed=rep)
            wall = time.perf_counter() - t
            kept, gen = sum(x["kept_tokens"] for x in trajs), sum(x["generated_tokens"] for x in trajs)
            return kept / wall, {"wall_s": round(wall, 2), "kept_tokens": kept, "generated_tokens": gen,
                                 "searches_per_traj": round(sum(x["searches"] for x in trajs) / len(trajs), 2),
                                 "answered": sum(x["answer"] is not None for x in trajs)}
        ours(-1), baseline(-1)  # warm-up (engine shapes, first generate)
        a, b, sa, sb = [], [], [], []
        for rep in range(self.p["reps"]):
            pair = [(ours, a, sa), (baseline, b, sb)]
            for fn, out, info in (pair if rep % 2 == 0 else pair[::-1]):
                v, s = fn(rep)
                out.append(v), info.append(s)
        o, bb, r = paired(a, b)
        keep = ("wall_s", "sampled_tokens", "searches_per_traj", "turns_per_traj", "answered", "finish")
        self.details["rollout: zs-ray runs"] = [{k: s[k] for k in keep} for s in sa]
        self.details["rollout: reference-loop runs"] = sb
        if search.share_identical:  # the zs-ray side's calls answered by an identical call of the same step
            self.details["rollout: simulator calls shared"] = round(search.counters.shared / max(search.counters.calls, 1), 3)
        self.engine = engine
        return [Row("1. rollout with search (zs-ray vs reference loop)", o, bb, r, ">= 3", "tok/s",
                    f"{len(self.rows)} prompts x {n}, max_turns {rc['max_turns']}, {rc['max_turn_tokens']} tok/turn; "
                    f"{self.paths['source']}, "
                    f"{statistics.median(s['searches_per_traj'] for s in sa):.2f} searches/traj")]

    # -------------------------------------------------------------- 6a. rollout workers
    def rollout_scaling(self, counts=(1, 2, 4)) -> list[Row]:
        from actors.rollout_worker import RolloutWorker
        from zs_ray.core.rollout import RolloutRequest
        from zs_ray.core.schedule import split_groups

        ray, rc, n = self.ray, self.rollout_cfg, int(self.rollout_cfg["n_samples"])
        search_cfg = {"backend": self.sim_cfg["backend"], "app_name": "bench_sim", "topk": self.sim_cfg["topk"],
                      "timeout_s": 300, "share_identical": bool(self.sim_cfg["share_identical"])}
        gpus = self.cfg.resources.gpus_per_rollout_worker
        workers = [RolloutWorker.options(num_cpus=0.5, num_gpus=gpus).remote(
            self.paths["policy"], rc, search_cfg, i, 0, self.device) for i in range(max(counts))]
        ray.get([w.ready.remote() for w in workers])

        def tok_s(k, step):
            """(sampled tokens/s, share of the machine's cores kept busy) of one rollout with k workers."""
            t, b = time.perf_counter(), cpu_busy_s()
            parts = ray.get([w.rollout.remote(part, RolloutRequest(n, step))
                             for w, part in zip(workers, split_groups(self.rows, k)) if part])
            wall = time.perf_counter() - t
            tokens = sum(sum(x["loss_mask"]) for part in parts for x in part)
            return tokens / wall, (cpu_busy_s() - b) / ((os.cpu_count() or 1) * wall)
        for k in counts:  # warm-up every engine involved
            tok_s(k, -1)
        res, busy = {k: [] for k in counts}, {k: [] for k in counts}
        for rep in range(self.p["scale_reps"]):
            for k in (counts if rep % 2 == 0 else counts[::-1]):
                rate, share = tok_s(k, rep)
                res[k].append(rate)
                busy[k].append(share)
        for w in workers:
            ray.kill(w)
        self.details["rollout tok/s by workers"] = {k: [round(x) for x in v] for k, v in res.items()}
        self.details["rollout: busy share of the cores by workers"] = {k: [round(x, 2) for x in v]
                                                                       for k, v in busy.items()}
        use = {k: statistics.median(v) for k, v in busy.items()}
        rows = []
        for k in counts[1:]:
            o, b, r = paired(res[k], res[counts[0]])
            rows.append(Row(f"6. rollout, {k} vs 1 rollout workers", o, b, r, ">= 1", "tok/s",
                            f"{os.cpu_count()} cores busy {use[counts[0]]:.0%} with 1 worker (+ the simulator), "
                            f"{use[k]:.0%} with {k}"))
        return rows

    # -------------------------------------------------------------- 6b. policy workers
    def policy_scaling(self) -> Row:
        import torch

        from actors.worker_group import WorkerGroup
        from zs_ray.config import to_dict
        from zs_ray.core.algorithms import grpo_advantages
        from zs_ray.core.batch import collate

        trajs = self.last_trajs
        batch = collate(trajs, self.engine.tokenizer.pad_token_id)
        batch["advantages"] = grpo_advantages(torch.tensor([t["reward"] for t in trajs]),
                                              [t["prompt_id"] for t in trajs], 1e-6)
        algo, model = to_dict(self.cfg.algorithm), to_dict(self.cfg.model)
        res = {"num_cpus": 0.5, "num_gpus": self.cfg.resources.gpus_per_policy_worker}
        groups = {k: WorkerGroup(k, self.paths["policy"], algo, model, "actor", res, self.device, 0) for k in (1, 2)}

        def step(g):
            t = time.perf_counter()
            lp = g.compute_logprobs(batch)
            g.update(dict(batch, old_logprobs=lp, ref_logprobs=lp))
            return time.perf_counter() - t
        step(groups[1]), step(groups[2])  # warm-up
        t1, t2 = [], []
        for rep in range(self.p["reps"]):
            pair = [(groups[1], t1), (groups[2], t2)]
            for g, out in (pair if rep % 2 == 0 else pair[::-1]):
                out.append(step(g))
        for g in groups.values():
            g.shutdown()
        o, b, r = paired(t2, t1)
        return Row("6. policy step (log-probs + update), 2 vs 1 FSDP2 workers", o, b, r, "<= 1", "s",
                   f"{len(trajs)} trajectories, {int(batch['loss_mask'].sum())} policy tokens; time ratio")

    # -------------------------------------------------------------- 2 + 4. trainer
    def trainer(self) -> list[Row]:
        from ray import serve

        from zs_ray.config import load_config
        from zs_ray.train.trainer import Trainer

        serve.delete("bench_sim")  # free its memory; the Trainer deploys its own simulator
        w, p = self.paths["world"], self.p
        cfg = load_config(self.cfg_path, [
            f"data.train_files=[{w}/world/train.parquet]", f"data.test_files=[{w}/world/test.parquet]",
            f"model.policy_path={self.paths['policy']}", f"search.simulator_model={self.paths['simulator']}",
            f"search.corpus={w}/world/corpus.jsonl", f"search.index_dir={self.work}/bm25",
            f"trainer.output_dir={self.work}/trainer", "tracking.enabled=false", "trainer.steps=1000",
            "trainer.checkpoint_every=0", "trainer.sample_every=0", "trainer.eval_every=0",
            f"search.http_port={self.sim_cfg['http_port']}"] + list(self.overrides))
        tr = Trainer(cfg, progress=lambda *_: None)
        by_kind: dict[int, dict[str, list[float]]] = {0: {}, 1: {}}  # staleness -> process kind -> core-s per step

        def segment(staleness: int, n: int):
            """n steps with this staleness (Trainer.next_step, as in Trainer.train); returns step intervals,
            metrics and the machine's busy CPU core-seconds in each interval."""
            tr.cfg.trainer.staleness = staleness
            end, ends, ms, busy, procs = tr.step + n, [], [], [], []
            while tr.step < end:
                ms.append(tr.next_step(launch_until=end))
                ends.append(time.perf_counter())
                busy.append(cpu_busy_s())
                procs.append(cpu_by_process())
            # the first step fills the pipeline: not counted
            for a, b in zip(procs, procs[1:]):
                for k in b:
                    by_kind[staleness].setdefault(k, []).append(b[k] - a.get(k, 0.0))
            return [b - a for a, b in zip(ends, ends[1:])], ms, [b - a for a, b in zip(busy, busy[1:])]
        try:
            segment(0, 1)  # warm-up
            s0, s1, metrics, cpu = [], [], [], {0: [], 1: []}
            for rep in range(p["stale_reps"]):
                pair = [(0, s0), (1, s1)]
                for st, out in (pair if rep % 2 == 0 else pair[::-1]):
                    dts, ms, busy = segment(st, p["steps"] + 1)
                    out.append(statistics.median(dts))
                    cpu[st].append(statistics.median(busy))
                    metrics += ms
        finally:
            tr.shutdown()
        o, b, r = paired(s1, s0)
        sync = [m["time/sync"] for m in metrics]
        step = [m["time/step"] for m in metrics]
        fracs = [a / c for a, c in zip(sync, step)]
        self.details["step s (staleness 1, 0)"] = [[round(x, 2) for x in s1], [round(x, 2) for x in s0]]
        self.details["time/sync s"] = [round(x, 3) for x in sync]
        self.details["busy CPU core-s per step (staleness 1, 0)"] = [[round(x, 2) for x in cpu[1]],
                                                                     [round(x, 2) for x in cpu[0]]]
        # Which processes spend them: a kind that is busy at staleness 0 while it waits (polling) is work that
        # overlapping can save; without such waste the floor of the step time is the busy core-s over the cores.
        self.details["busy CPU core-s per step by process (staleness 1, 0)"] = {
            k: [round(statistics.median(by_kind[st][k]), 2) if by_kind[st].get(k) else 0.0 for st in (1, 0)]
            for k in sorted(set(by_kind[0]) | set(by_kind[1]))}
        cores = os.cpu_count() or 1
        use = [statistics.median(c / (cores * t) for c, t in zip(cpu[k], s)) for k, s in ((1, s1), (0, s0))]
        c1, c0, cr = paired(cpu[1], cpu[0])
        n_traj = int(cfg.trainer.prompts_per_step) * int(cfg.rollout.n_samples)
        # Busy is not useful: a waiting process that polls counts as busy, so this is no lower bound on the time.
        return [Row("2. training step, staleness 1 vs 0", o, b, r, "<= 0.7", "s/step",
                    f"{n_traj} trajectories/step, {cfg.resources.policy_workers} policy workers; time ratio"),
                Row("2. busy CPU per step, staleness 1 vs 0", c1, c0, cr, "", "core-s",
                    f"the machine's busy core-seconds per step; {cores} cores busy {use[0]:.0%} vs {use[1]:.0%}"),
                Row("4. weight sync / step time", statistics.median(sync), statistics.median(step),
                    statistics.median(fracs), "<= 0.05", "s", "time/sync over time/step, median over steps")]


def run(quick: bool = False, config: Optional[str] = None, overrides=(), work: Optional[str] = None,
        out_md: Optional[str] = None, skip=(), log=print, models: Optional[str] = None) -> list[Row]:
    from zs_ray.config import load_config
    from zs_ray.runtime import apply_local_env

    mode = "quick" if quick else "full"
    p = PRESETS[mode]
    work = os.path.abspath(work or os.path.join(project_root(), "runs", "bench", mode))
    os.makedirs(work, exist_ok=True)
    apply_local_env()
    os.environ.setdefault("ZS_RAY_TMP", f"/tmp/zsb_{os.getpid()}")
    import torch

    torch.set_num_threads(1)  # both rollout variants get the same one thread (as the actors do)
    cfg_path = config or default_config()
    cfg = load_config(cfg_path, list(overrides))
    info, rows, t0 = machine(), [], time.perf_counter()
    command = "zs-ray bench" + (" --quick" if quick else "") + (f" --models {models}" if models else "")

    def attempt(name, fn):
        if name in skip:
            return
        try:
            out = fn()
            rows.extend(out if isinstance(out, list) else [out])
        except Exception as e:  # noqa: BLE001 - one broken figure must not lose the others
            import traceback

            traceback.print_exc()
            rows.append(Row(f"{name}: FAILED", None, None, None, "", note=repr(e)[:200]))
        log(table(rows))

    def quickstart():
        nonlocal models
        q = measure_quickstart(os.path.join(work, "quickstart"), p["quickstart"], p["quickstart_timeout_s"], log=log)
        bad = q["rc"] != 0
        if not bad and not models and p["models_from_quickstart"]:  # the other figures run the method's models
            models = os.path.join(work, "quickstart")
        note = f"preset `{p['quickstart']}`, rc={q['rc']}" + (
            f" (did not finish: killed at the {p['quickstart_timeout_s']} s limit or failed; peak up to then; "
            f"log {os.path.relpath(q['log'], project_root())})" if bad else "")
        return [Row("5. quickstart peak RSS (process tree)", q["peak_rss_gib"], 8.0, q["peak_rss_gib"] / 8.0, "<= 1",
                    "GiB", note + f"; baseline = the 8 GiB budget; RSS counts shared pages (libraries, Ray's "
                    f"shared memory) once per process: peak PSS {q['peak_pss_gib']:.2f} GiB"),
                Row("5. quickstart wall time", q["wall_s"] / 60, 15.0, q["wall_s"] / 60 / 15.0, "<= 1", "min",
                    note + "; baseline = the 15 min budget", failed=bad)]
    attempt("5. quickstart", quickstart)
    details: dict = {}
    figures = ("3. simulator", "1. rollout", "6. rollout workers", "6. policy workers", "2/4. trainer")
    if set(figures) - set(skip):
        b = Bench(work, p, prepare(work, p, log, models), cfg, log)
        b.cfg_path, b.overrides, details = cfg_path, list(overrides), b.details
        details["models"] = b.paths["source"]
        for name, fn in zip(figures, (b.simulator, b.rollout, b.rollout_scaling, b.policy_scaling, b.trainer)):
            attempt(name, fn)
        b.ray.shutdown()
    details["bench wall time s"] = round(time.perf_counter() - t0)
    if skip:
        command += "".join(f" --skip '{s}'" for s in skip)
    text = markdown(rows, mode, info, command, details)
    log("\n" + text)
    write_section(out_md or os.path.join(project_root(), "BENCHMARKS.md"), mode, text)
    log_mlflow(rows, mode, info, text, os.path.join(project_root(), "runs", "bench"), log)
    return rows
