"""`zs-ray chaos`: one training run while its parts are killed, then checks that nothing was lost.

One run of `steps` GRPO steps on the real stack (FSDP2 policy worker, vLLM rollout workers, the Serve simulator
with two replicas, MLflow behind a real `mlflow server`), a tiny warm-started policy on the synthetic world.
At random steps (seeded), each in its own fifth of the run:
  1. a rollout worker's process is SIGKILLed;
  2. a simulator replica's process is SIGKILLed;
  3. the MLflow server is SIGKILLed, and started again (same port, same store) a step later;
  4. the driver and its Ray are SIGKILLed just after a checkpoint, and the run is resumed (trainer.resume=auto).
Then it checks what an unfaulted run would show:
  - the prompts consumed are exactly an unfaulted run's, in order (none twice, none skipped);
  - no trained sample is older than trainer.staleness policy versions (`batch/max_staleness` at every step);
  - one MLflow run, FINISHED, holds every step's metrics (sent late if the server was down).
It prints what it did and found, writes chaos.json, and exits 1 when a check fails. Processes are found by an
environment marker, as an operator would find them, not through the driver's own handles.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Callable, Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def expected_consumed(cfg, steps: int) -> list:
    """What an unfaulted run consumes: the prompt ids of steps 0..steps-1 in order (zs_ray.core.schedule)."""
    from zs_ray.core.schedule import prompts_for_step
    from zs_ray.data.qa import load_dataset_files

    rows = load_dataset_files(list(cfg.data.train_files), split="train")
    out = []
    for s in range(steps):
        idx = prompts_for_step(len(rows), s, cfg.trainer.prompts_per_step, cfg.trainer.seed, cfg.data.shuffle)
        out.extend(sorted({rows[i]["prompt_id"] for i in idx}))
    return out


def processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose environment holds `marker` (a driver and the Ray it started)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append((int(pid), f.read().replace(b"\0", b" ").decode(errors="replace").strip()))
        except OSError:
            pass
    return found


def kill_matching(marker: str, prefix: str = "", limit: Optional[int] = None) -> list[int]:
    """SIGKILL the marked processes whose command line starts with `prefix` (all for ''; the first `limit`
    of them, by pid, if given); returns their pids."""
    pids = sorted(pid for pid, cmd in processes(marker) if cmd.startswith(prefix))[:limit]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a sqlite store: started, killed and started again on the same port."""

    def __init__(self, root: str, port: Optional[int] = None):
        from zs_ray.runtime import free_port

        self.root, self.port, self.proc = os.path.abspath(root), port or free_port(), None
        os.makedirs(self.root, exist_ok=True)
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> None:
        self.launch()
        self.wait_healthy(timeout_s)

    def launch(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--artifacts-destination", f"{self.root}/artifacts", "--workers", "1"]
        with open(os.path.join(self.root, "server.log"), "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}); see {self.root}/server.log")
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server not healthy within {timeout_s:.0f} s; see {self.root}/server.log")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


class Driver:
    """`jobs/train.py CONFIG` in its own process group with its own Ray, marked so its tree can be found."""

    def __init__(self, cfg_path: str, log_path: str, extra: tuple = ()):
        self.marker = f"ZS_RAY_TMP=/tmp/zsc_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(PYTHONUNBUFFERED="1", ZS_RAY_TMP=self.marker.split("=", 1)[1])
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "jobs/train.py", cfg_path, *extra], cwd=REPO, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def step(self) -> int:
        done = re.findall(r"\[train\] step (\d+)/", self.log())
        return int(done[-1]) if done else 0

    def kill(self) -> None:
        """The driver, then everything its Ray started (raylet, GCS, workers)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        kill_matching(self.marker)


def _world(out: str, seed: int, progress) -> tuple[str, str]:
    """The small world and a policy warm-started on its demonstrations (so it searches from step 0)."""
    from transformers import AutoTokenizer

    from zs_ray.sft.sft import encode_chat_example, sft_train
    from zs_ray.world.files import build_world_assets

    world, warm = os.path.join(out, "world"), os.path.join(out, "world", "warm")
    if not os.path.exists(os.path.join(warm, "config.json")):
        progress("[chaos] building the world and warm-starting the tiny policy")
        build_world_assets(world, seed=seed, n_entities=40, n_test_entities=8, n_pretrain=0, topk=5)
        tok = AutoTokenizer.from_pretrained(f"{world}/tokenizer")
        demos = [json.loads(line) for line in open(f"{world}/world/warmstart.jsonl")]
        sft_train(f"{world}/policy", [encode_chat_example(tok, d["prompt"], d["response"]) for d in demos],
                  tokenizer=tok, steps=100, lr=2e-3, batch_size=8, warmup=10, threads=2, out_dir=warm, log_every=0)
    return world, warm


def chaos_config(world: str, warm: str, out: str, steps: int, seed: int, uri: str, *extra):
    from zs_ray.config import load_config

    return load_config(None, [
        f"data.train_files=[{world}/world/train.parquet]", f"model.policy_path={warm}",
        "search.backend=simulate_sft", f"search.simulator_model={world}/simulator", "search.topk=2",
        "search.max_tokens=48", "search.timeout_s=20", "search.max_retries=3", "search.backoff_s=0.2",
        "rollout.n_samples=2", "rollout.max_turns=2", "rollout.max_turn_tokens=24", "rollout.max_obs_tokens=96",
        "rollout.max_context_tokens=512", "rollout.kv_cache_gb=0.25", "resources.rollout_workers=2", "resources.simulator_replicas=2", "resources.policy_workers=1",
        "resources.num_cpus=8", "trainer.prompts_per_step=3", f"trainer.steps={steps}", "trainer.staleness=1",
        f"trainer.seed={seed}", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=2",
        "trainer.sample_every=0", f"trainer.output_dir={out}/run", "algorithm.lr=3e-4",
        "algorithm.micro_batch_size=8", f"tracking.uri={uri}", "tracking.experiment=zs-ray-chaos",
        "tracking.run_name=chaos", *extra])


def plan_faults(steps: int, seed: int) -> dict[str, int]:
    """The step after which each fault strikes: one per fifth of the run, at a seeded random place in it."""
    rng, q = random.Random(seed), max(1, steps // 5)
    names = ("rollout worker", "simulator replica", "mlflow server", "driver")
    # the driver's kill waits for a checkpoint at or after its step, which must come before the last step
    return {n: max(1, min(steps - (3 if n == "driver" else 1), rng.randint(i * q + 1, (i + 1) * q)))
            for i, n in enumerate(names)}


def run_chaos(out: str, steps: int = 30, seed: int = 0, timeout_s: float = 3600,
              progress: Callable[[str], None] = print) -> dict:
    from zs_ray.config import save_config
    from zs_ray.train import checkpoint as ckpt

    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    world, warm = _world(out, seed, progress)
    server = MlflowServer(os.path.join(out, "mlflow"))
    server.start()
    cfg = chaos_config(world, warm, out, steps, seed, server.uri)
    cfg_path = os.path.join(out, "chaos.yaml")
    save_config(cfg, cfg_path)
    plan, done, mlflow_back_at = plan_faults(steps, seed), {}, None
    progress(f"[chaos] {steps} steps; faults after steps {plan}; logs in {out}")
    ckpt_root = os.path.join(cfg.trainer.output_dir, "checkpoints")
    drivers = [Driver(cfg_path, os.path.join(out, "driver_1.log"))]
    deadline = time.time() + timeout_s
    try:
        while drivers[-1].proc.poll() is None and time.time() < deadline:
            d, now = drivers[-1], drivers[-1].step()
            due = [n for n, s in plan.items() if n not in done and now >= s]
            for name in due:
                if name == "rollout worker":
                    done[name] = (now, kill_matching(d.marker, "ray::RolloutWorker", limit=1))
                elif name == "simulator replica":
                    done[name] = (now, kill_matching(d.marker, "ray::ServeReplica:simulator", limit=1))
                elif name == "mlflow server":
                    server.kill()
                    done[name], mlflow_back_at = (now, [server.port]), now + 1
                elif name == "driver":
                    latest = ckpt.latest(ckpt_root)
                    if not latest or ckpt.load_driver_state(latest)["step"] < plan[name]:
                        continue  # wait for the checkpoint: the kill lands between it and the next
                    d.kill()
                    done[name] = (now, [d.proc.pid])
                    progress(f"[chaos] driver killed after step {now}; resuming from {latest}")
                    drivers.append(Driver(cfg_path, os.path.join(out, "driver_2.log"), ("trainer.resume=auto",)))
                if name in done:
                    progress(f"[chaos] killed the {name} after step {now}: {done[name][1]}")
            if mlflow_back_at is not None and drivers[-1].step() >= mlflow_back_at:
                server.launch()  # not waited for: under training load it takes tens of seconds to answer
                mlflow_back_at = None
                progress(f"[chaos] mlflow server starting again after step {drivers[-1].step()}")
            time.sleep(0.2)
        if mlflow_back_at is not None:  # the run ended while the server was down: its finish had nothing to talk to
            server.launch()
        rc = drivers[-1].proc.wait(timeout=max(1.0, deadline - time.time()))
        server.wait_healthy()
        result = check(cfg, steps, server.uri, ckpt_root, drivers, done, plan, rc)
    finally:
        for d in drivers:
            d.kill()
        server.kill()
    # the server is gone now; its store stays
    result["tracking"] = (f"{result['tracking'] or 'MLflow:'} The server has stopped; its store: mlflow ui "
                          f"--backend-store-uri sqlite:///{server.root}/mlflow.db --host 127.0.0.1")
    with open(os.path.join(out, "chaos.json"), "w") as f:
        json.dump(result, f, indent=1)
    for line in report(result):
        progress(line)
    return result


def check(cfg, steps: int, uri: str, ckpt_root: str, drivers: list, done: dict, plan: dict, rc: int) -> dict:
    """The run's end state against an unfaulted run's: consumed prompts, staleness, the MLflow run."""
    import mlflow

    from zs_ray.train import checkpoint as ckpt

    checks, logs = {}, "".join(d.log() for d in drivers)
    checks["the resumed driver finished"] = (rc == 0, f"exit code {rc}")
    latest = ckpt.latest(ckpt_root)
    state = ckpt.load_driver_state(latest) if latest else {"step": 0, "consumed": []}
    want = expected_consumed(cfg, steps)
    checks["prompts consumed = an unfaulted run's"] = (
        state["step"] == steps and state["consumed"] == want,
        f"{len(state['consumed'])} consumed at step {state['step']}, {len(want)} expected")
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    checks["one MLflow run, FINISHED"] = (len(runs) == 1 and runs[0].info.status == "FINISHED",
                                          f"{len(runs)} run(s): {[r.info.status for r in runs]}")
    hist = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "reward/mean")} if runs else {}
    checks["every step's metrics in it"] = (set(range(1, steps + 1)) <= set(hist),
                                            f"steps logged: {len(set(hist) & set(range(1, steps + 1)))} of {steps}")
    stale = [m.value for m in client.get_metric_history(runs[0].info.run_id, "batch/max_staleness")] if runs else []
    checks["no trained sample beyond the staleness bound"] = (
        bool(stale) and max(stale) <= cfg.trainer.staleness,
        f"max trained staleness {max(stale) if stale else None} (bound {cfg.trainer.staleness})")
    restarts = re.findall(r"\[fault\] rollout worker \d+ died", logs)
    checks["the dead rollout worker was replaced"] = (len(restarts) >= 1, f"{len(restarts)} restart message(s)")
    checks["each fault struck"] = (set(done) == set(plan) and all(v[1] for v in done.values()),
                                   {k: f"after step {v[0]}, pids {v[1]}" for k, v in done.items()})
    summary = [line for line in logs.splitlines() if line.startswith("MLflow:")]
    return {"steps": steps, "plan": plan, "checks": {k: {"ok": bool(ok), "detail": det} for k, (ok, det) in
                                                       checks.items()},
            "tracking": summary[-1] if summary else None, "ok": all(ok for ok, _ in checks.values())}


def report(result: dict) -> list[str]:
    lines = [f"\nchaos run, {result['steps']} steps: {'PASSED' if result['ok'] else 'FAILED'}", "",
             "| check | ok | detail |", "|---|---|---|"]
    lines += [f"| {k} | {'yes' if v['ok'] else 'NO'} | {v['detail']} |" for k, v in result["checks"].items()]
    if result["tracking"]:
        lines.append(f"\n{result['tracking']}")
    return lines
