"""`zs-ray bench peer`: zs-ray beside a real peer, TRL's `GRPOTrainer`, on the same single-turn task.

The task both sides can run: answer a training question in one turn with a short phrase inside
`<answer></answer>` (`zs_ray.eval.evaluation.DIRECT_TEMPLATE`), reward = the config's training reward (F1 by
default, `zs_ray.core.reward.training_reward`) of the tagged answer. Both sides get, from one config:

    model and its trainable layers (model.trainable_layers: the lower layers and the embeddings frozen),
    the same questions in the same order (steps x prompts_per_step rows, no shuffling), group size
    (rollout.n_samples), prompts per step, learning rate (constant, no warm-up), weight decay, gradient clip,
    PPO clip, KL coefficient, sampling temperature / top_p, completion budget (rollout.max_turn_tokens),
    token-mean loss over the batch (TRL loss_type="dapo"), group-normalised advantages, one optimiser step per
    batch, the threads of this machine.

Each side runs in a fresh process, one after the other (never both at once), and its final policy is then
evaluated by the same code (`zs-ray eval --mode direct`, greedy) on the same held-out questions. Figures: the
median wall time per step (the first step, which loads and compiles, is not counted), sampled tokens per
second of step wall time, the mean training reward of the last steps and the held-out F1 / EM.

What differs is each framework's own machinery, which is what is compared: zs-ray samples with a vLLM engine in a
Ray actor, trains in an FSDP2 worker and syncs the trained layers to the engine each step, stops a completion
at `</answer>`, and (algorithm.filter_groups) skips the update pass for groups whose rewards all tie; TRL samples
with the training model's `generate` (its default; TRL's vLLM modes need a CUDA vLLM) until EOS and trains in
the same process. The settings of both sides are printed beside the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

LAST_STEPS = 5  # "reward after N steps": the mean training reward of the last LAST_STEPS steps


# ------------------------------------------------------------------ the task and the settings
def task_files(cfg, steps: int, eval_rows: int, work: str, format_rows: int = 0) -> tuple[str, str, list[dict]]:
    """train.parquet: the first steps x prompts_per_step training rows (seeded shuffle of data.train_files);
    test.parquet: up to eval_rows test rows (seeded shuffle of data.test_files). Prompts are the direct template's.
    Also returns `format_rows` further training rows (none of the task's) for `format_start`."""
    import random

    from zs_ray.data.qa import load_dataset_files, write_searchr1_parquet
    from zs_ray.eval.evaluation import baseline_row

    n = steps * int(cfg.trainer.prompts_per_step)
    rows = load_dataset_files(list(cfg.data.train_files))
    if len(rows) < n + format_rows:
        raise ValueError(f"bench peer: {steps} steps x {cfg.trainer.prompts_per_step} prompts and {format_rows} format "
                         f"demonstrations need {n + format_rows} training rows; data.train_files has {len(rows)}")
    random.Random(int(cfg.trainer.seed)).shuffle(rows)
    test = load_dataset_files(list(cfg.data.test_files))
    random.Random(int(cfg.trainer.seed) + 1).shuffle(test)
    os.makedirs(work, exist_ok=True)
    paths = os.path.join(work, "train.parquet"), os.path.join(work, "test.parquet")
    direct = [baseline_row(r, "direct") for r in rows[:n + format_rows]]
    write_searchr1_parquet(direct[:n], paths[0])
    write_searchr1_parquet(test[:eval_rows], paths[1])
    return paths[0], paths[1], direct[n:]


def format_start(cfg, rows: list[dict], out: str, steps: int, batch_size: int = 4, lr: float = 1e-4,
                 log=print) -> str:
    """The starting policy of both sides: model.policy_path after `steps` SFT steps on `<answer> gold </answer>`
    for questions outside the task (an instruct model asked for the tags answers in prose, every reward is 0 and
    no group has a gradient on either side); only model.trainable_layers learn, as in RL. Returns its folder."""
    from zs_ray.data.qa import golds_of
    from zs_ray.sft.real_warmstart import sft_top_layers

    pairs = [(r["prompt"][0]["content"], f"<answer> {golds_of(r)[0]} </answer>") for r in rows]
    res = sft_top_layers(cfg.model.policy_path, pairs, cfg.model.trainable_layers, out, steps=steps, lr=lr,
                         batch_size=batch_size, warmup=2, seed=int(cfg.trainer.seed),
                         threads=int(cfg.resources.threads_per_actor), progress=log, label="peer format start",
                         log_every=10)
    log(f"[bench peer] format start: {steps} steps x {batch_size}, final loss {res.get('final_loss', float('nan')):.3f}"
        f" -> {out}")
    return out


def trl_settings(cfg, steps: int, train_file: str, out: str) -> dict:
    """TRL's side of the comparison, every value taken from the zs-ray config."""
    a, r = cfg.algorithm, cfg.rollout
    if a.name != "grpo":
        raise ValueError(f"bench peer compares GRPO; algorithm.name is {a.name!r}")
    return {"model": cfg.model.policy_path, "trainable_layers": cfg.model.trainable_layers, "train_file": train_file,
            "out": out, "steps": steps, "prompts_per_step": int(cfg.trainer.prompts_per_step),
            "num_generations": int(r.n_samples), "max_completion_length": int(r.max_turn_tokens),
            "temperature": float(r.temperature), "top_p": float(r.top_p), "learning_rate": float(a.lr),
            "weight_decay": float(a.weight_decay), "max_grad_norm": float(a.grad_clip), "epsilon": float(a.clip),
            "beta": float(a.kl_coef), "reward": a.reward, "seed": int(cfg.trainer.seed),
            "micro_batch_size": int(a.micro_batch_size),
            "threads": int(cfg.resources.threads_per_actor), "dtype": cfg.model.dtype}


def zs_overrides(train_file: str, steps: int, out: str) -> list[str]:
    """TRL has no entropy bonus: zs-ray's is set to 0 (the only setting the comparison changes on one side)."""
    return [f"data.train_files=[{train_file}]", "data.shuffle=false", "rollout.max_turns=0", "algorithm.entropy_coef=0",
            f"trainer.steps={steps}",
            f"trainer.output_dir={out}", "trainer.resume=never", "trainer.checkpoint_every=0",
            "trainer.sample_every=0", "trainer.eval_every=0", "tracking.enabled=false"]


# ------------------------------------------------------------------ the two sides (each in its own process)
def run_zs(config: str, overrides: list[str]) -> dict:
    from zs_ray.config import load_config
    from zs_ray.train.trainer import Trainer

    cfg = load_config(config, overrides)
    tr = Trainer(cfg, progress=lambda *_: None)
    steps = []
    try:
        while tr.step < cfg.trainer.steps:
            t = time.perf_counter()
            m = tr.next_step()
            wall = time.perf_counter() - t
            steps.append({"wall_s": wall, "reward": m["reward/mean"], "rest_s": wall - m["time/generation"],
                          "sampled_tokens": m["rollout/response_tokens"] * m["rollout/trajectories"],
                          "gen_s": m["time/generation"], "update_s": m["time/update"], "sync_s": m["time/sync"],
                          "trained_trajectories": m["batch/trained"]})
        policy = os.path.join(cfg.trainer.output_dir, "policy_hf")
        tr.export_policy(policy)
    finally:
        tr.shutdown()
    return {"steps": steps, "policy": policy}


def run_trl(s: dict) -> dict:
    import torch

    torch.set_num_threads(s["threads"])
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from zs_ray.core.layers import freeze_lower_layers
    from zs_ray.core.reward import extract_answer, training_reward
    from zs_ray.data.qa import golds_of, load_rows

    tok = AutoTokenizer.from_pretrained(s["model"])
    model = AutoModelForCausalLM.from_pretrained(s["model"], dtype=getattr(torch, s["dtype"]), use_safetensors=True)
    freeze_lower_layers(model, s["trainable_layers"])
    chat = bool(getattr(tok, "chat_template", None))  # zs-ray's rule (zs_ray.core.rollout.encode_prompt)
    rows = load_rows(s["train_file"])
    ds = Dataset.from_list([{"prompt": [dict(m) for m in r["prompt"]] if chat else r["prompt"][0]["content"],
                             "golds": golds_of(r)} for r in rows])

    def reward(prompts, completions, golds, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [training_reward(extract_answer(t), g, s["reward"]) for t, g in zip(texts, golds)]

    class Clock(TrainerCallback):
        """Each step's wall time and the part of it spent in the model's `generate` (TRL's sampling)."""
        def __init__(self):
            self.walls, self.gens, self.t, self.gen = [], [], None, 0.0

        def on_step_begin(self, *_, **__):
            self.t, self.gen = time.perf_counter(), 0.0

        def on_step_end(self, *_, **__):
            self.walls.append(time.perf_counter() - self.t)
            self.gens.append(self.gen)

    clock = Clock()
    generate = model.generate

    def timed_generate(*args, **kwargs):  # an instrument for the figures; TRL's own generate runs unchanged
        t = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            clock.gen += time.perf_counter() - t
    model.generate = timed_generate

    batch = s["prompts_per_step"] * s["num_generations"]
    micro = s["micro_batch_size"] if batch % s["micro_batch_size"] == 0 else batch
    # zs-ray's update: micro-batches of algorithm.micro_batch_size, one optimiser step per batch; so here: one
    # generation of `batch` completions (steps_per_generation = the accumulation steps), then `batch // micro`
    # accumulated micro-batches and one optimiser step
    args = GRPOConfig(
        output_dir=s["out"], max_steps=s["steps"], per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro,
        num_generations=s["num_generations"], max_completion_length=s["max_completion_length"],
        temperature=s["temperature"], top_p=s["top_p"], learning_rate=s["learning_rate"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=s["weight_decay"], max_grad_norm=s["max_grad_norm"],
        epsilon=s["epsilon"], beta=s["beta"], loss_type="dapo", scale_rewards="group", num_iterations=1,
        shuffle_dataset=False, seed=s["seed"], use_cpu=True, bf16=False, fp16=False, logging_steps=1,
        save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[clock])
    trainer.train()
    policy = os.path.join(s["out"], "policy_hf")
    trainer.save_model(policy)
    tok.save_pretrained(policy)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    steps = [{"wall_s": w, "gen_s": g, "rest_s": w - g, "reward": h["reward"],
              "sampled_tokens": h["completions/mean_length"] * batch} for w, g, h in zip(clock.walls, clock.gens, logs)]
    return {"steps": steps, "policy": policy, "version": trl.__version__,
            "config": {k: v for k, v in args.to_dict().items() if k in TRL_SHOWN}}


TRL_SHOWN = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "num_generations",
             "max_completion_length", "temperature", "top_p", "learning_rate", "lr_scheduler_type", "weight_decay", "max_grad_norm",
             "epsilon", "beta", "loss_type", "scale_rewards", "num_iterations", "use_vllm", "shuffle_dataset",
             "use_cpu", "bf16", "seed")


# ------------------------------------------------------------------ the comparison
def _child(side: str, spec: dict, work: str, log) -> dict:
    """One side in a fresh Python process (its own threads and memory); its result as JSON."""
    spec_path, res_path = os.path.join(work, f"{side}_spec.json"), os.path.join(work, f"{side}_result.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    log_path = os.path.join(work, f"{side}.log")
    log(f"[bench peer] {side}: running (log {log_path})")
    t = time.perf_counter()
    with open(log_path, "w") as lf:
        rc = subprocess.run([sys.executable, "-m", "zs_ray.bench.peer", "--side", side, spec_path, res_path],
                            stdout=lf, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not os.path.exists(res_path):
        tail = open(log_path).read()[-2000:]
        raise RuntimeError(f"bench peer: the {side} side failed (rc {rc}); log {log_path}:\n{tail}")
    res = json.load(open(res_path))
    res["total_s"] = time.perf_counter() - t
    return res


def _evaluate(config: str, overrides: list[str], policy: str, test_file: str, out: str, log) -> dict:
    cmd = [sys.executable, "-m", "zs_ray.cli", "eval", config, "--mode", "direct", "--out", out, *overrides,
           f"model.policy_path={policy}", f"data.test_files=[{test_file}]", "tracking.enabled=false"]
    log(f"[bench peer] eval {policy}")
    with open(out + ".log", "w") as lf:
        rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"bench peer: evaluating {policy} failed (rc {rc}); log {out}.log")
    return json.load(open(os.path.join(out, "summary.json")))["summary"]["average"]


def side_figures(res: dict) -> dict:
    steps = res["steps"]
    timed = steps[1:] or steps
    walls = [x["wall_s"] for x in timed]
    return {"steps": len(steps), "step_s": statistics.median(walls),
            "gen_s": statistics.median(x["gen_s"] for x in timed),
            "rest_s": statistics.median(x["rest_s"] for x in timed),
            "tok_per_s": sum(x["sampled_tokens"] for x in timed) / sum(walls),
            "reward_first": statistics.mean(x["reward"] for x in steps[:LAST_STEPS]),
            "reward_last": statistics.mean(x["reward"] for x in steps[-LAST_STEPS:])}


def compare(config: str, overrides=(), steps: int = 20, eval_rows: int = 100, work: Optional[str] = None,
            format_steps: int = 30, log=print) -> dict:
    """The format start (format_steps > 0), both sides, then both evaluations; returns what `markdown` renders."""
    from zs_ray.config import load_config, to_dict

    work = os.path.abspath(work or os.path.join("runs", "bench", "peer"))
    base = load_config(config, list(overrides))
    train_file, test_file, fmt_rows = task_files(base, steps, eval_rows, work, format_rows=format_steps * 4)
    model = base.model.policy_path
    if format_steps > 0:
        start = format_start(base, fmt_rows, os.path.join(work, "format_start"), format_steps, log=log)
        overrides = [*overrides, f"model.policy_path={start}"]
        base = load_config(config, list(overrides))
    zs_over = [*overrides, *zs_overrides(train_file, steps, os.path.join(work, "zs"))]
    trl_spec = trl_settings(base, steps, train_file, os.path.join(work, "trl"))
    zs_cfg = load_config(config, zs_over)
    out = {"settings": {"trl": trl_spec, "zs": {k: to_dict(getattr(zs_cfg, k)) for k in ("rollout", "algorithm")}},
           "config": config, "overrides": list(overrides), "steps": steps, "eval_rows": eval_rows,
           "format_steps": format_steps, "model": model, "start": base.model.policy_path}
    out["start_eval"] = _evaluate(config, list(overrides), base.model.policy_path, test_file,
                                  os.path.join(work, "eval_start"), log)
    for side, spec in (("zs", {"config": config, "overrides": zs_over}), ("trl", trl_spec)):
        res = _child(side, spec, work, log)
        res["figures"] = side_figures(res)
        res["eval"] = _evaluate(config, list(overrides), res["policy"], test_file, os.path.join(work, f"eval_{side}"),
                                log)
        out[side] = res
        log(f"[bench peer] {side}: {json.dumps(res['figures'])} held-out {json.dumps(res['eval'])}")
    return out


def rows(res: dict) -> list:
    from zs_ray.bench.report import Row

    z, t = res["zs"], res["trl"]
    zf, tf = z["figures"], t["figures"]
    ze, te = z["eval"], t["eval"]
    n = res["steps"]
    return [
        Row("peer 1. wall time per step", zf["step_s"], tf["step_s"], zf["step_s"] / tf["step_s"], "<= 0.5", "s",
            f"median of steps 2-{n}; sampling {zf['gen_s']:.1f} vs {tf['gen_s']:.1f} s, the rest of the step "
            f"{zf['rest_s']:.1f} vs {tf['rest_s']:.1f} s"),
        Row("peer 2. sampled tokens per second", zf["tok_per_s"], tf["tok_per_s"], zf["tok_per_s"] / tf["tok_per_s"],
            "", "tok/s", "sampled tokens over step wall time, steps 2-" + str(n)),
        Row(f"peer 3. training reward, last {LAST_STEPS} steps", zf["reward_last"], tf["reward_last"],
            zf["reward_last"] / tf["reward_last"] if tf["reward_last"] else None, "",
            "", f"first {LAST_STEPS} steps: {zf['reward_first']:.3f} vs {tf['reward_first']:.3f}"),
        Row(f"peer 4. held-out F1 after {n} steps", ze["f1"], te["f1"], ze["f1"] / te["f1"] if te["f1"] else None, "",
            "", f"greedy, `zs-ray eval --mode direct`, {res['eval_rows']} test questions (the starting policy: F1 "
                f"{res['start_eval']['f1']:.3f}, EM {res['start_eval']['em']:.3f}); EM {ze['em']:.3f} vs "
                f"{te['em']:.3f}, answered {ze['answered']:.2f} vs {te['answered']:.2f}"),
    ]


def markdown(res: dict, info: dict, command: str) -> str:
    from zs_ray.bench.report import table

    t = res["trl"]
    zs_set = {**{f"rollout.{k}": v for k, v in res["settings"]["zs"]["rollout"].items()
                 if k in ("engine", "n_samples", "temperature", "top_p", "max_turns", "max_turn_tokens")},
              **{f"algorithm.{k}": v for k, v in res["settings"]["zs"]["algorithm"].items()
                 if k in ("name", "reward", "lr", "weight_decay", "grad_clip", "clip", "kl_coef", "entropy_coef",
                          "micro_batch_size", "filter_groups")}}
    return (f"### `{command}` — {info['date']}\n\n"
            f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, GPU: {info['gpu']}. Model "
            f"`{res['model']}` (trainable layers: {res['settings']['trl']['trainable_layers']}"
            + (f"; both sides start from it after {res['format_steps']} SFT steps x 4 on `<answer> gold </answer>` for "
               "other training questions, so that rewards are not all 0" if res["format_steps"] else "")
            + f"), {res['steps']} steps x "
            f"{res['settings']['trl']['prompts_per_step']} prompts x {res['settings']['trl']['num_generations']} "
            f"samples, the same questions in the same order, one side after the other. ours = zs-ray, baseline = TRL "
            f"{t['version']} `GRPOTrainer`. Total wall: zs-ray {res['zs']['total_s']:.0f} s, TRL {t['total_s']:.0f} s "
            f"(model load and engine start included).\n\n" + table(rows(res)) +
            "\n\nSettings:\n\n"
            f"- zs-ray (`{res['config']}`{''.join(' ' + o for o in res['overrides'])}; for the task: data.shuffle=false, "
            f"rollout.max_turns=0, algorithm.entropy_coef=0): {json.dumps(zs_set)}\n"
            f"- TRL: {json.dumps(t['config'])}, lower layers frozen with `zs_ray.core.layers.freeze_lower_layers`, "
            "sampling with the model's `generate`\n")


def _side_main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m zs_ray.bench.peer")
    p.add_argument("--side", choices=("zs", "trl"), required=True)
    p.add_argument("spec")
    p.add_argument("result")
    a = p.parse_args(argv)
    spec = json.load(open(a.spec))
    res = run_zs(spec["config"], spec["overrides"]) if a.side == "zs" else run_trl(spec)
    with open(a.result, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(_side_main(sys.argv[1:]))
