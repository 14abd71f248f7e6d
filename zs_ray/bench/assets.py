"""The bench's models, and figure 5's harness.

Models: the full preset runs its figures on the output of the quickstart that figure 5 has just run (its world,
warm-started policy with the copy prior, fine-tuned simulator: the models the method trains), or on the one
`--models DIR` names. Without one (the quick preset, figure 5 skipped or failed) `prepare` builds the bench's own:
a small world, a policy briefly SFT'd on its warmstart.jsonl (it searches, but has no copy prior, so its GRPO
groups rarely repeat a query) and a simulator fine-tuned on BM25 documents, cached under the work dir.
Figure 5 (`measure_quickstart`): the quickstart in a child process, RSS of its whole process tree.
CPU accounting (figures 2 and 6): the machine's busy core-seconds, and whose they are.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

from zs_ray.paths import project_root


# ------------------------------------------------------------------ CPU accounting
def cpu_busy_s() -> float:
    """The machine's busy CPU time so far, summed over cores (s): not idle, iowait or steal (the hypervisor's);
    guest time is already inside user time on Linux."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - sum(getattr(t, k, 0.0) for k in ("idle", "iowait", "steal", "guest", "guest_nice"))


# Process kinds by a word of their command line (Ray names actor processes "ray::<Class>...").
PROCESS_KINDS = ("PolicyWorker", "RolloutWorker", "ServeReplica", "EngineCore", "raylet", "gcs_server")


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of this user's processes, summed per kind (PROCESS_KINDS, `driver` = this process,
    `other`): says which of a step's busy core-seconds are whose. Processes that exit in between are lost."""
    import psutil

    out: dict[str, float] = {}
    me, uid = os.getpid(), os.getuid()
    for pr in psutil.process_iter(["cmdline", "uids", "cpu_times"]):
        info = pr.info
        if not info.get("cpu_times") or (info.get("uids") and info["uids"].real != uid):
            continue
        cmd = " ".join(info.get("cmdline") or [])
        kind = "driver" if pr.pid == me else next((k for k in PROCESS_KINDS if k in cmd), "other")
        out[kind] = out.get(kind, 0.0) + info["cpu_times"].user + info["cpu_times"].system
    return out


# ------------------------------------------------------------------ assets
QUICKSTART_MODELS = {"world": "world/world/train.parquet", "policy": "policy_warm/model.safetensors",
                     "simulator": "simulator_sft/model.safetensors"}


def quickstart_models(out: str) -> dict:
    """The world, warm-started policy and simulator of a finished quickstart (`zs-ray quickstart --out OUT`)."""
    missing = [f"{out}/{f}" for f in QUICKSTART_MODELS.values() if not os.path.exists(f"{out}/{f}")]
    if missing:
        raise FileNotFoundError(f"--models {out}: not a finished quickstart output, missing {', '.join(missing)}")
    return {"world": f"{out}/world", "policy": f"{out}/policy_warm", "simulator": f"{out}/simulator_sft",
            "source": f"the quickstart's models ({os.path.relpath(out, project_root())})"}


def prepare(work: str, p: dict, log=print, models: Optional[str] = None) -> dict:
    """The models the figures run: a quickstart's (`models`), else the bench's own small world + briefly SFT'd
    policy + fine-tuned simulator (cached: rebuilt only when missing)."""
    from zs_ray.world.files import build_world_assets

    if models:
        return quickstart_models(os.path.abspath(models))
    paths = {"world": f"{work}/world", "policy": f"{work}/policy_sft", "simulator": f"{work}/simulator_sft",
             "source": f"the bench's own models (policy {p['policy_sft']} SFT steps, no copy prior; simulator "
                       f"{p['sim_sft']} SFT steps)"}
    if not os.path.exists(f"{work}/world/world/train.parquet"):
        log("[bench] building the world and tiny models")
        build_world_assets(paths["world"], seed=0, n_entities=p["entities"], n_test_entities=10, n_pretrain=0)
    if not os.path.exists(f"{paths['policy']}/model.safetensors"):
        from transformers import AutoTokenizer

        from zs_ray.sft.sft import encode_chat_example, sft_train

        tok = AutoTokenizer.from_pretrained(f"{work}/world/tokenizer")
        demos = [json.loads(ln) for ln in open(f"{work}/world/world/warmstart.jsonl")]
        r = sft_train(f"{work}/world/policy", [encode_chat_example(tok, d["prompt"], d["response"]) for d in demos],
                      tokenizer=tok, steps=p["policy_sft"], lr=2e-3, batch_size=8, warmup=10, threads=2,
                      out_dir=paths["policy"], progress=log, label="bench policy sft", log_every=50)
        log(f"[bench] policy SFT: {r['steps']} steps, loss {r['final_loss']:.3f}")
    if not os.path.exists(f"{paths['simulator']}/model.safetensors"):
        import shutil

        from zs_ray.data.qa import load_rows
        from zs_ray.sft.simulator_sft import run as sim_sft

        res = sim_sft(f"{work}/world/simulator", f"{work}/simulator_job", questions=load_rows(
            f"{work}/world/world/train.parquet"), corpus=f"{work}/world/world/corpus.jsonl", topk=3,
            steps=p["sim_sft"], heldout_frac=0.0, log=log, threads=2)
        shutil.copytree(res["model_dir"], paths["simulator"], dirs_exist_ok=True)
    return paths


# ------------------------------------------------------------------ figure 5 (own process tree)
def measure_quickstart(out: str, preset: str, timeout_s: float, poll_s: float = 0.5, log=print) -> dict:
    """Run the quickstart in a child process; sum the RSS of its whole process tree every `poll_s`."""
    import psutil

    env = {**os.environ, "ZS_RAY_TMP": f"/tmp/zsb_qs_{os.getpid()}"}
    cmd = [sys.executable, "-m", "jobs.quickstart", "--out", out, "--preset", preset]
    t0, peak, peak_pss, n = time.perf_counter(), 0, 0, 0
    pss_every = max(1, round(10 / poll_s))  # polls between PSS reads (see below)
    logf = open(os.path.join(os.path.dirname(out), f"quickstart_{preset}.log"), "w")
    proc = subprocess.Popen(cmd, cwd=project_root(), env=env, stdout=logf, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    while proc.poll() is None and time.perf_counter() - t0 < timeout_s:
        rss = pss = 0
        try:
            for q in [root] + root.children(recursive=True):
                try:
                    rss += q.memory_info().rss
                    # PSS (shared pages split between processes) every ~10 s: reading the smaps of the 17
                    # processes at GRPO costs 0.05-0.08 s of CPU (RSS: 0.0004 s), taken from what we time
                    pss += q.memory_full_info().pss if n % pss_every == 0 else 0
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak, peak_pss, n = max(peak, rss), max(peak_pss, pss), n + 1
        time.sleep(poll_s)
    wall = time.perf_counter() - t0
    if proc.poll() is None:  # over the time limit: stop the tree we started, children first
        for q in root.children(recursive=True) + [root]:
            try:
                q.kill()
            except psutil.Error:
                pass
    rc = proc.wait()
    logf.close()
    log(f"[bench] quickstart {preset}: rc={rc}, {wall:.0f} s, peak RSS {peak / 2 ** 30:.2f} GiB, "
        f"peak PSS {peak_pss / 2 ** 30:.2f} GiB")
    return {"rc": rc, "wall_s": wall, "peak_rss_gib": peak / 2 ** 30, "peak_pss_gib": peak_pss / 2 ** 30,
            "log": logf.name}
