"""The driver. One step reads top to bottom (`train_step`): take a batch of groups, reference log-probs,
advantages, update, weight sync, log, checkpoint. `next_step` launches the rollouts of later steps first, so
they run on the rollout workers while the policy trains, bounded by the staleness rule (zs_ray/core/schedule.py).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from zs_ray.config import SIMULATOR_BACKENDS, save_config, to_dict
from zs_ray.core.algorithms import (gae, group_spread, grpo_advantages, masked_whiten, ppo_token_rewards,
                                    reinforce_advantages, tied_groups)
from zs_ray.core.batch import collate
from zs_ray.core.curriculum import noise_at
from zs_ray.core.rollout import RolloutRequest
from zs_ray.core.schedule import LaunchQueue, may_train, prompts_for_step, split_groups
from zs_ray.data.qa import load_dataset_files
from zs_ray.preflight import serves_simulator
from zs_ray.train import checkpoint as ckpt
from zs_ray.train.step_metrics import StepTimes, samples_text, step_metrics
from zs_ray.train.tracking import Tracker
from zs_ray.weight_sync.choose import resolve_weight_sync

log = logging.getLogger("zs_ray.train.trainer")


class PolicyWorkerError(RuntimeError):
    """A policy / reference / critic worker died: the run stops; resume with trainer.resume=auto."""


@dataclass
class PendingRollout:
    """One step's rollout calls, launched and not yet collected."""
    step: int
    launched_at: float  # time.perf_counter()
    jobs: list  # RolloutPool.submit's


class Trainer:
    def __init__(self, cfg, progress=print):
        from actors.rollout_pool import RolloutPool
        from actors.rollout_worker import RolloutWorker
        from actors.worker_group import WorkerGroup
        from zs_ray.runtime import init_ray

        self.cfg, self.progress = cfg, progress
        # object_store | nccl; rollout.weight_sync=nccl that cannot run here fails now, before Ray or any actor.
        self.weight_sync = resolve_weight_sync(cfg)
        self.out = os.path.abspath(cfg.trainer.output_dir)
        os.makedirs(self.out, exist_ok=True)
        save_config(cfg, os.path.join(self.out, "config.yaml"))
        self.rows = load_dataset_files(list(cfg.data.train_files), split="train")  # validated before any actor starts
        init_ray(num_cpus=cfg.resources.num_cpus)
        from zs_ray.train.placement import plan, policy_roles

        # STRICT_PACK for each FSDP group, SPREAD for rollout workers; a clear error names missing resources.
        self.placement = plan(cfg)
        self.ckpt_root = os.path.join(self.out, "checkpoints")
        resume_from = self._resume_path()  # a resumed run logs on into its MLflow run, unsent metrics first
        saved = ckpt.load_driver_state(resume_from) if resume_from else {}
        self.tracker = Tracker(cfg, run_id=saved.get("mlflow_run_id"), pending=saved.get("mlflow_pending"))
        self.curriculum_steps = cfg.curriculum.total_steps or cfg.trainer.steps
        r, a, m = cfg.resources, cfg.algorithm, cfg.model
        algo, model = {**to_dict(a), "total_steps": cfg.trainer.steps}, to_dict(m)  # for the lr schedule
        res = lambda kind: {"num_cpus": r[f"cpus_per_{kind}"], "num_gpus": r[f"gpus_per_{kind}"]}  # noqa: E731
        self.search_cfg = self._start_search()
        group = lambda path, role, **kw: WorkerGroup(  # noqa: E731
            r.policy_workers, path, algo, model, role, res("policy_worker"), r.device, cfg.trainer.seed,
            self.placement.policy_group(role), r.threads_per_actor, **kw)
        roles, ref_path = policy_roles(cfg), m.reference_path or m.policy_path  # the placement groups' roles
        self.colocated_ref = a.kl_coef > 0 and "ref" not in roles
        self.policy = group(m.policy_path, "actor", ref_path=ref_path if self.colocated_ref else None)
        self.ref = group(ref_path, "ref") if "ref" in roles else None
        self.critic = group(m.critic_path or m.policy_path, "critic") if "critic" in roles else None
        self.eval_rows = (load_dataset_files(list(cfg.data.test_files), split="test")[: cfg.trainer.eval_rows]
                          if cfg.trainer.eval_every and cfg.data.test_files else [])
        eval_search = self._bm25_cfg()
        # The same arguments every time, so a dead rollout worker is replaced by an identical one.
        new_rollout = lambda i: RolloutWorker.options(**self.placement.rollout_options(i)).remote(  # noqa: E731
            m.policy_path, to_dict(cfg.rollout), self.search_cfg, i, cfg.trainer.seed, r.device,
            cfg.resources.threads_per_actor, eval_search, model)
        self.rollout = RolloutPool(new_rollout, r.rollout_workers, self.policy, self.weight_sync,
                                   cfg.trainer.rollout_timeout_s, cfg.trainer.sync_timeout_s, progress,
                                   self._await_rollout_bundle)
        log.info("weight sync: %s", self.weight_sync)
        self.tokenizer = _tokenizer(m.policy_path)
        self.step, self.version, self.consumed = 0, 0, []
        self.launched = LaunchQueue()  # rollouts launched for the coming steps, not yet trained on
        self.resume()

    # ---------------------------------------------------------------- set-up helpers
    def _bm25_cfg(self) -> Optional[dict]:
        """Real search for held-out evaluation; the index is built once here, not raced by every worker."""
        s = self.cfg.search
        if not s.corpus and not s.index_dir:
            return None
        from zs_ray.search.retrieval import BM25Index

        index_dir = s.index_dir or os.path.join(self.out, "bm25")
        BM25Index.load_or_build(s.corpus, index_dir) if s.corpus else BM25Index.load(index_dir)
        return {"backend": "bm25", "corpus": s.corpus, "index_dir": index_dir, "topk": s.topk,
                "max_doc_words": s.max_doc_words, "max_query_chars": s.max_query_chars}

    def _start_search(self) -> dict:
        """Deploy the Serve simulator when the backend needs one and no external URL is given."""
        s = to_dict(self.cfg.search)
        s["curriculum"] = {**to_dict(self.cfg.curriculum), "total_steps": self.curriculum_steps}  # read by noise_at
        s["seed"] = self.cfg.trainer.seed
        if s["backend"] == "bm25":
            s.update(self._bm25_cfg() or {})
        if serves_simulator(self.cfg):
            from actors.simulator import deploy_simulator

            r = self.cfg.resources
            deploy_simulator(s, s["simulator_model"], name="simulator", replicas=r.simulator_replicas,
                             max_replicas=r.simulator_max_replicas, num_cpus=r.cpus_per_simulator,
                             num_gpus=r.gpus_per_simulator)
            s["serve_app"] = "simulator"
        return s

    def resume(self) -> None:
        """Continue from the checkpoint trainer.resume names (auto: the latest; never: none): weights, step,
        policy version and consumed prompts; the rollout workers then get those weights."""
        self.launched.clear()  # what was launched before was for the old position
        path = self._resume_path()
        if not path:
            return
        state = ckpt.load_driver_state(path)
        self.policy.load_checkpoint(os.path.join(path, "policy"))
        if self.critic:
            self.critic.load_checkpoint(os.path.join(path, "critic"))
        self.step, self.version, self.consumed = state["step"], state["version"], state["consumed"]
        self.progress(f"resumed from {path}: next step {self.step}, policy version {self.version}")
        self.sync_weights()

    def _resume_path(self) -> Optional[str]:
        mode = self.cfg.trainer.resume
        return ckpt.latest(self.ckpt_root) if mode == "auto" else (None if mode == "never" else mode)

    # ---------------------------------------------------------------- rollout and sync
    def launch_rollouts(self, gen_step: int) -> PendingRollout:
        """Start the rollouts of step `gen_step` (now or ahead of it); all samples of a prompt go to one worker."""
        idx = prompts_for_step(len(self.rows), gen_step, self.cfg.trainer.prompts_per_step,
                               self.cfg.trainer.seed, self.cfg.data.shuffle)
        request = RolloutRequest(self.cfg.rollout.n_samples, gen_step, reward_kind=self.cfg.algorithm.reward)
        jobs = self.rollout.submit(split_groups([self.rows[i] for i in idx], len(self.rollout)), request)
        return PendingRollout(gen_step, time.perf_counter(), jobs)

    def collect_rollouts(self, pending: PendingRollout) -> tuple[list[dict], float]:
        """The launched step's trajectories and the seconds since its launch."""
        trajs = self.rollout.collect(pending.jobs)
        return trajs, time.perf_counter() - pending.launched_at

    def rollout_step(self) -> list[dict]:
        """The current step's trajectories, generated now with the current weights (no overlap)."""
        return self.collect_rollouts(self.launch_rollouts(self.step))[0]

    def _await_rollout_bundle(self) -> None:
        """Before a rollout worker is replaced: after a node loss its bundle must be rescheduled first; this
        names what is missing if it cannot be."""
        from zs_ray.train.placement import wait_ready

        wait_ready(self.placement.rollout, self.cfg.resources.placement_timeout_s, "rollout")

    def sync_weights(self) -> float:
        """Full weights to every rollout worker, tagged with the policy version (rollout.weight_sync: object
        store or NCCL, actors/rollout_pool.py). A timeout is an error, not a hang."""
        return self.rollout.sync(self.version)

    # ---------------------------------------------------------------- the loop
    def train(self) -> dict:
        import ray

        cfg, last = self.cfg, {}
        t0, start_step = time.perf_counter(), self.step
        self.launched.clear()  # an earlier call's launched rollouts (it failed mid-step) are not reused
        if self.eval_rows and self.step == 0:  # the starting point of the held-out curve
            self.tracker.log_metrics(self.evaluate(), step=0)
        try:
            while self.step < cfg.trainer.steps:
                last = self.next_step()
                eta = (time.perf_counter() - t0) / (self.step - start_step) * (cfg.trainer.steps - self.step)
                self.progress(f"[train] step {self.step}/{cfg.trainer.steps}  reward {last['reward/mean']:.3f}  "
                              f"em {last['reward/em']:.3f}  searches {last['rollout/searches']:.2f}  "
                              f"p_noise {last['curriculum/noise_p']:.3f}  {last['time/step']:.1f}s/step  "
                              f"eta {eta:.0f}s")
        except ray.exceptions.RayActorError as e:  # rollout workers are restarted by the pool: a policy-side actor
            self.tracker.finish("FAILED")
            raise PolicyWorkerError(f"{self._which_actor(e)} died at step {self.step}: the run stops. Resume from "
                                    f"the last checkpoint ({ckpt.latest(self.ckpt_root) or 'none yet'}) with "
                                    f"trainer.resume=auto; steps after it are redone.") from e
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        self.export_policy(os.path.join(self.out, "policy_hf"))
        self.tracker.finish()
        last["tracking_failures"], last["tracking_lost"] = self.tracker.failures, self.tracker.lost
        return last

    def next_step(self, launch_until: Optional[int] = None) -> dict:
        """One training step with overlap: first launch every later step's rollouts that the staleness rule
        (trainer.staleness) allows, up to step `launch_until` (default trainer.steps), then train on this
        step's. Returns the step's metrics."""
        until = self.cfg.trainer.steps if launch_until is None else launch_until
        pending = self.launched.take(self.step, self.version, self.cfg.trainer.staleness, until, self.launch_rollouts)
        return self.train_step(*self.collect_rollouts(pending))

    def train_step(self, trajs: list[dict], t_gen: float) -> dict:
        """One update from one step's trajectories (`t_gen`: their generation time), then the weight sync,
        logging and checkpoint; returns the step's metrics."""
        cfg, a, step = self.cfg, self.cfg.algorithm, self.step
        times, t0 = StepTimes(generation=t_gen), time.perf_counter()
        # 1. keep only samples within the staleness bound (never train on older ones)
        fresh = [t for t in trajs if may_train(t["policy_version"], step, cfg.trainer.staleness)]
        stale_hist = collections.Counter(step - t["policy_version"] for t in trajs)
        # 2. group the rewards by the unique prompt id; algorithm.filter_groups keeps the groups whose rewards differ
        scores = torch.tensor([t["reward"] for t in fresh], dtype=torch.float32)
        ids = [t["prompt_id"] for t in fresh]
        spread = group_spread(scores, ids)
        ties = tied_groups(scores, ids, spread)
        keep = spread if a.filter_groups else torch.ones_like(spread)
        train, ids, scores = [t for t, k in zip(fresh, keep) if k], [i for i, k in zip(ids, keep) if k], scores[keep]
        batch, stats = None, {"skipped": 1.0}  # nothing to learn from (every group filtered): the weights stay
        times.reward = time.perf_counter() - t0
        if train:
            t1 = time.perf_counter()
            batch = collate(train, self.tokenizer.pad_token_id)
            # 3. log-probs of the frozen reference (the KL anchor; PPO: and of the policy that generated)
            self._add_logprobs(batch)
            # 4. advantages: GRPO per prompt group, REINFORCE against the batch mean, PPO from the critic
            if a.name == "grpo":
                batch["advantages"] = grpo_advantages(scores, ids, a.adv_eps)
            elif a.name == "reinforce":
                batch["advantages"] = reinforce_advantages(scores)
            else:
                self._add_ppo_advantages(batch, scores)
            # 5. update the policy (and the critic)
            stats = self._update(batch)
            times.update = time.perf_counter() - t1
        # 6. the new weights to every rollout worker
        t2 = time.perf_counter()
        self.version += 1
        times.sync = self.sync_weights()
        self.step += 1
        self.consumed.extend(sorted({t["prompt_id"] for t in trajs}))
        # 7. log and checkpoint
        metrics = step_metrics(fresh, stats, stale_hist, times, noise_p=self.noise_p(self.step - 1),
                               rollout_restarts=self.rollout.restarts, policy_version=self.version)
        metrics.update(ties)  # groups whose rewards all tie: no GRPO gradient
        metrics["batch/max_staleness"] = max((step - t["policy_version"] for t in fresh), default=0)
        metrics["batch/trained"] = 0 if batch is None else int(batch["input_ids"].shape[0])
        metrics["time/step"] = t_gen + times.reward + times.update + (time.perf_counter() - t2)
        self._log_and_checkpoint(metrics, fresh)
        return metrics

    def _add_logprobs(self, batch: dict) -> None:
        """The reference's log-probs (the KL anchor) and, for PPO's KL-in-reward, the current policy's. Otherwise
        no forward pass for old_logprobs: with one optimiser step per batch the weights do not move before the
        batch's last gradient, so the loss's default (the detached current log-probs) is the same numbers; with
        algorithm.epochs > 1 the policy workers compute them before the first epoch."""
        if self.cfg.algorithm.name == "ppo":
            batch["old_logprobs"] = self.policy.compute_logprobs(batch)
        if self.colocated_ref:
            batch["ref_logprobs"] = self.policy.compute_logprobs(batch, reference=True)
        elif self.ref is not None:
            batch["ref_logprobs"] = self.ref.compute_logprobs(batch)

    def _add_ppo_advantages(self, batch: dict, scores: torch.Tensor) -> None:
        """PPO: the KL in the reward, GAE with gamma = lambda = 1 over the policy's tokens, whitened advantages;
        the critic's values now (for the clipped value loss) and the raw returns it learns from."""
        a = self.cfg.algorithm
        values = self.critic.compute_values(batch)
        ref_lp = batch.get("ref_logprobs", batch["old_logprobs"])
        tok_r = ppo_token_rewards(scores, batch["old_logprobs"], ref_lp, batch["loss_mask"], a.kl_in_reward_beta)
        adv, batch["returns"] = gae(tok_r, values, batch["loss_mask"], a.gamma, a.lam)
        batch["advantages"] = masked_whiten(adv, batch["loss_mask"])
        batch["values"] = values

    def _update(self, batch: dict) -> dict:
        """The policy's update; with a critic, its update too, and the policy waits out the critic's warm-up
        (algorithm.critic_warmup steps) while the value function leaves its random start."""
        warming = self.critic is not None and self.step < self.cfg.algorithm.critic_warmup
        stats = {} if warming else self.policy.update(batch)
        if self.critic is not None:
            stats.update({f"critic/{k}": v for k, v in self.critic.update_critic(batch).items()})
        return stats

    def _log_and_checkpoint(self, metrics: dict, fresh: list[dict]) -> None:
        cfg = self.cfg.trainer
        if self.eval_rows and self.step % cfg.eval_every == 0:
            metrics.update(self.evaluate())
        self.tracker.log_metrics(metrics, step=self.step)
        if cfg.sample_every and (self.step % cfg.sample_every == 0 or self.step == 1):
            self.tracker.log_text(samples_text(self.tokenizer, fresh[:4]), f"samples/step_{self.step:06d}.txt")
        if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
            self.save_checkpoint()

    # ---------------------------------------------------------------- bookkeeping
    def noise_p(self, step: int) -> float:
        """The noise probability the simulator clients use at `step` (0 for real-search backends)."""
        if self.cfg.search.backend not in SIMULATOR_BACKENDS:
            return 0.0
        return noise_at(self.search_cfg["curriculum"], step)

    def evaluate(self) -> dict:
        """Greedy rollouts on held-out rows with real search, spread over the rollout workers."""
        parts = split_groups(self.eval_rows, len(self.rollout))
        trajs = self.rollout.collect(self.rollout.submit(parts, RolloutRequest.held_out(self.step)))
        n = max(len(trajs), 1)
        return {f"eval/{k}": sum(t["metrics"][k] for t in trajs) / n for k in ("em", "cover_em", "f1")} | {
            "eval/searches": sum(t["searches"] for t in trajs) / n}

    def save_checkpoint(self) -> str:
        def parts(d):
            self.policy.save_checkpoint(os.path.join(d, "policy"))
            if self.critic:
                self.critic.save_checkpoint(os.path.join(d, "critic"))

        state = {"step": self.step, "version": self.version, "consumed": self.consumed,
                 "noise_p": self.noise_p(self.step), "mlflow_run_id": self.tracker.run_id or self.tracker.resume_id,
                 "mlflow_pending": self.tracker.pending}  # metrics the store has not taken yet
        path = ckpt.save(self.ckpt_root, self.step, state, parts, self.cfg.trainer.keep_checkpoints)
        self.progress(f"[ckpt] {path}")
        return path

    def export_policy(self, out_dir: str) -> str:
        self.policy.export_hf(out_dir, self.cfg.model.policy_path)
        return out_dir

    def _which_actor(self, err: BaseException) -> str:
        """'policy worker (role actor, rank 0)' for the policy-side actor named by a RayActorError."""
        dead = getattr(err, "actor_id", None)
        for g in (self.policy, self.ref, self.critic):
            for rank, w in enumerate(g.workers if g is not None else []):
                if dead and w._actor_id.hex() == dead:
                    return f"policy worker (role {g.role}, rank {rank})"
        return "a policy worker"

    def shutdown(self) -> None:
        self.rollout.shutdown()
        for g in (self.policy, self.ref, self.critic):
            if g is not None:
                g.shutdown()
        self.placement.remove()


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def run(cfg, progress=print) -> dict:
    """Train with `cfg`; returns the last step's metrics."""
    from zs_ray.preflight import check_hardware

    check_hardware(cfg)
    trainer = Trainer(cfg, progress)
    try:
        result = trainer.train()
        progress(trainer.tracker.summary())
        with open(os.path.join(trainer.out, "final_metrics.json"), "w") as f:
            json.dump(result, f, indent=1)
        return result
    finally:
        trainer.shutdown()
