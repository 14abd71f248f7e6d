"""The paper's table in miniature: every row with the same world, seeds and RL budget.

Rows: the warm start; the warm start + more SFT with the same number of trajectories as
RL (the honest baseline); GRPO with real BM25 search (Search-R1); GRPO with the fine-tuned simulator
and the curriculum (ZeroSearch); the prompt-based simulator; no curriculum; PPO and REINFORCE; and
the ZeroSearch policy evaluated without search. Held-out EM uses real BM25 search at test time.
"""
from __future__ import annotations

import csv
import os
import time

from zs_ray.world.quickstart import (PRESETS, build_prior, evaluate, quickstart_config, train_simulator, warm_start,
                                     write_world)

RL_ROWS = {
    # name: config overrides of the GRPO run
    "GRPO + real BM25 search": ["search.backend=bm25"],
    "GRPO + simulate_sft + curriculum": [],
    "GRPO + simulate_prompt + curriculum": ["search.backend=simulate_prompt", "search.simulator_model={out}/policy_pre"],
    "GRPO + simulate_sft, no curriculum": ["curriculum.enabled=false"],
    # PPO at 3e-4 lost the format within 8 policy updates in every variant measured
    # (docs/experiments.md); at 1e-4, with the critic trained alone for its first 10 steps, it stays stable
    "PPO + simulate_sft + curriculum": ["algorithm.name=ppo", "algorithm.lr=1e-4", "algorithm.critic_lr=1e-4",
                                        "algorithm.critic_warmup=10"],
    "REINFORCE + simulate_sft + curriculum": ["algorithm.name=reinforce"],
}


def _history(cfg, run_name: str, metrics=("em", "f1")) -> dict[str, list[tuple[int, float]]]:
    """Held-out metrics (eval/<m>) over training steps, read back from the run's MLflow metrics."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'",
                              order_by=["start_time DESC"], max_results=20, output_format="list") if exp else []
    # the newest *training* run of that name: the held-out evaluation after it logs under the same name
    runs = [r for r in runs if f"eval/{metrics[0]}" in r.data.metrics]
    if not runs:
        return {m: [] for m in metrics}
    client = mlflow.tracking.MlflowClient()
    return {m: sorted((h.step, h.value) for h in client.get_metric_history(runs[0].info.run_id, f"eval/{m}"))
            for m in metrics}


def _sft_baseline(out: str, warm: str, n_demos: int, seed: int, progress, out_dir: str) -> str:
    """More warm-start SFT from the warm start `warm`, as many demonstrations as RL samples trajectories."""
    warm_start(out, max(1, n_demos // 8), seed + 1, progress, out_dir, base=warm, warmup=1, label="sft-baseline")
    return out_dir


def row_slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")


def run_table(out: str = "runs/quickstart", preset: str = "full", seed: int = 0, rows=None, progress=print,
              reuse: bool = False, rl_steps: int | None = None, warm_steps: int | None = None) -> dict:
    """All rows; `reuse=True` evaluates an RL row's finished policy instead of training it again (a table
    interrupted after some rows resumes; curves come from the MLflow history of the finished run).
    `rl_steps` replaces the preset's RL budget (the SFT row's demonstrations scale with it); `warm_steps` starts
    every row from a warm start of that many steps (OUT/policy_warmN, built once from OUT/policy_pre) instead of
    the quickstart's: a shorter one leaves RL more of the format and search behaviour to learn."""
    for key, v in (("rl_steps", rl_steps), ("warm_steps", warm_steps)):
        if v is not None and int(v) < 1:
            raise ValueError(f"{key} must be >= 1, got {v}")
    from omegaconf import OmegaConf

    from zs_ray.core.search import NoSearch
    from zs_ray.eval.evaluation import run_evaluation
    from zs_ray.eval.report import AVERAGE
    from zs_ray.train.tracking import Tracker
    from zs_ray.train.trainer import run as train

    out, b, t0 = os.path.abspath(out), PRESETS[preset], time.perf_counter()
    steps = int(rl_steps if rl_steps is not None else b["rl_steps"])
    # a non-default budget writes beside the default table: `--reuse` never mixes rows of different budgets
    tag = "" if steps == b["rl_steps"] else f"_rl{steps}"
    warm = f"{out}/policy_warm"
    if warm_steps is not None and int(warm_steps) != b["warm_steps"]:
        tag, warm = f"{tag}_warm{warm_steps}", f"{out}/policy_warm{warm_steps}"
    tdir, sft_out = f"{out}/table{tag}", f"{out}/policy_more_sft{tag}"
    base = [f"model.policy_path={warm}", f"trainer.steps={steps}", f"trainer.seed={seed}",
            f"trainer.eval_every={max(5, steps // 4)}",  # five points on each curve, with step 0
            f"trainer.eval_rows={b['eval_rows']}", "tracking.experiment=zs-ray-table"]
    cfg = quickstart_config(out, base)
    if not os.path.exists(f"{out}/simulator_sft/model.safetensors"):  # reuse the quickstart's prior and simulator
        write_world(out, seed=seed)
        build_prior(out, b["pretrain_steps"], b["warm_steps"], seed, progress, b["induction_steps"])
        train_simulator(out, b["sim_steps"], cfg.simulator_sft.answer_weight, seed, progress)
    if not os.path.exists(f"{warm}/model.safetensors"):
        warm_start(out, int(warm_steps or b["warm_steps"]), seed, progress, out_dir=warm)
    results, curves = {}, {}
    a = lambda s: s.get(AVERAGE) or next(iter(s.values()))  # noqa: E731
    progress("\n=== [table] prior + warm start")
    results["prior + warm start"] = a(evaluate(cfg, warm, b["eval_rows"], f"table{tag}_warm"))
    n_traj = steps * cfg.trainer.prompts_per_step * cfg.rollout.n_samples
    progress(f"\n=== [table] warm start + more SFT ({n_traj} demonstrations = RL's trajectories)")
    reused = ["warm start + more SFT"] if reuse and os.path.exists(f"{sft_out}/model.safetensors") else []
    sft_dir = sft_out if reused else _sft_baseline(out, warm, n_traj, seed, progress, sft_out)
    sft_row = evaluate(cfg, sft_dir, b["eval_rows"], f"table{tag}_sft")
    results["warm start + more SFT, same compute as RL"] = a(sft_row)
    for name, ovs in RL_ROWS.items():
        if rows and name not in rows:
            continue
        progress(f"\n=== [table] {name}")
        slug = row_slug(name)
        rcfg = quickstart_config(out, base + [o.format(out=out) for o in ovs] + [
            f"trainer.output_dir={tdir}/{slug}", f"tracking.run_name={name}{tag}"])
        if reuse and os.path.exists(f"{tdir}/{slug}/policy_hf/model.safetensors"):
            progress(f"(reusing the finished policy in {tdir}/{slug})")
            reused.append(name)
        else:
            train(rcfg, progress)
        results[name] = a(evaluate(rcfg, f"{tdir}/{slug}/policy_hf", b["eval_rows"], f"table_{slug}"))
        curves[name] = _history(rcfg, rcfg.tracking.run_name)
    zs = f"{tdir}/{row_slug('GRPO + simulate_sft + curriculum')}/policy_hf"
    if os.path.isdir(zs):
        progress("\n=== [table] no search at test time")
        c = OmegaConf.merge(cfg, {"model": {"policy_path": zs}})
        res = run_evaluation(c, mode="agent", max_rows=b["eval_rows"], search=NoSearch(), progress=False,
                             out_dir=f"{out}/eval_table{tag}_nosearch")
        results["ZeroSearch policy, no search at test time"] = a(res["summary"])
    elapsed = time.perf_counter() - t0
    paths = write_table(results, curves, tdir, elapsed, preset, steps, warm_steps, reused)
    tracker = Tracker(OmegaConf.merge(cfg, {"tracking": {"run_name": f"table{tag}"}}), stage="table")
    for p in paths.values():
        tracker.log_artifact(p, "table")
    tracker.finish()
    progress("\n" + open(paths["markdown"]).read())
    return {"results": results, "curves": curves, "paths": paths, "seconds": elapsed}


def write_table(results: dict, curves: dict, out_dir: str, seconds: float, preset: str,
                rl_steps: int | None = None, warm_steps: int | None = None, reused=()) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    budget = (f", {rl_steps} RL steps" if rl_steps else "") + (f", a {warm_steps}-step warm start" if warm_steps else "")
    md = [f"Held-out EM with real BM25 search at test time (preset `{preset}`{budget}, {seconds / 60:.0f} min, "
          f"{time.strftime('%Y-%m-%d')})" + (f"; trained in an earlier run, evaluated again: {', '.join(reused)}."
                                               if reused else "."), "",
          "| row | EM | cover-EM | F1 | searches/question |", "|---|---|---|---|---|"]
    for name, a in results.items():
        md.append(f"| {name} | {100 * a['em']:.1f} | {100 * a['cover_em']:.1f} | {100 * a['f1']:.1f} | "
                  f"{a['searches']:.2f} |")
    paths = {"markdown": f"{out_dir}/table.md", "csv": f"{out_dir}/table.csv", "plot": f"{out_dir}/em_over_steps.png"}
    open(paths["markdown"], "w").write("\n".join(md) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "em", "cover_em", "f1", "searches"])
        for name, a in results.items():
            w.writerow([name, a["em"], a["cover_em"], a["f1"], a["searches"]])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # EM is the table's figure; F1 shows movement while EM is still flat
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("em", "f1")):
        for name, c in curves.items():
            pts = c.get(metric, [])
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=name)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"held-out {metric.upper()} (BM25 search)")
    if axes[0].get_legend_handles_labels()[0]:  # a table without RL rows has no curves to label
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=100)
    plt.close(fig)
    return paths
