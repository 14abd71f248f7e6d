"""Policy / reference / critic workers: Ray actors holding an FSDP2 shard of a Hugging Face model.

One `PolicyWorker` per rank; the ranks of a group form one torch.distributed process group (gloo
on CPU, nccl on GPU) and shard the model with FSDP2 (`fully_shard`: each decoder layer, then the
root). FSDP1 is not used: on CPU it needs an accelerator or segfaults gathering state dicts.

The driver-side handle, `WorkerGroup`, is in actors/worker_group.py.
Losses come from zs_ray.core.algorithms; batch tensors follow zs_ray.core.batch's alignment convention.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import defaultdict
from typing import Any, Optional

import ray
import torch
import torch.distributed as dist

from zs_ray.config import AlgorithmConfig, ModelConfig, section_defaults
from zs_ray.core.algorithms import actor_microbatch_loss, lr_factor, token_entropy, token_logprobs, value_loss
from zs_ray.core.batch import from_column, micro_batches, pad_columns, response_window, trim_padding
from zs_ray.core.layers import decoder_layers, freeze_lower_layers
from zs_ray.runtime import free_port
from zs_ray.weight_sync.nccl import NcclGroup, broadcast_state, pack_meta

ROLES = ("actor", "ref", "critic")
# What a caller leaves out of its algorithm / model dict. total_steps (the lr schedule's) is trainer.steps.
ALGO_DEFAULTS = {**section_defaults(AlgorithmConfig), "total_steps": 0}
MODEL_DEFAULTS = section_defaults(ModelConfig)


class Critic(torch.nn.Module):
    """The LM backbone + a scalar value head; `values[b, t]` = V(x_<t), aligned like log-probs."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.model = backbone  # named `model` so keys match the causal LM's ("model.layers.0...")
        self.value_head = torch.nn.Linear(hidden_size, 1)
        # small (as OpenRLHF's 1 / (hidden + 1)): values start near 0, so the first advantages are about the
        # reward, not a random per-token offset of the size of the reward itself (std hidden^-0.5 gave V ~ N(0, 1))
        torch.nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        v = self.value_head(h[:, :-1].float()).squeeze(-1)
        return torch.nn.functional.pad(v, (1, 0))


def _as_float(x: Any) -> Any:
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x) if torch.is_tensor(x) else x


# ---------------------------------------------------------------- the actor
@ray.remote
class PolicyWorker:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str,
                 algo_cfg: dict, model_cfg: dict, role: str = "actor", device: str = "cpu", threads: int = 1,
                 seed: int = 0, ref_path: Optional[str] = None):
        if role not in ROLES:
            raise ValueError(f"PolicyWorker role must be one of {ROLES}, got {role!r}")
        self.rank, self.world_size, self.role, self.device = rank, world_size, role, device
        self.master = f"tcp://{master_addr}:{int(master_port)}"
        self.model_path = model_path
        self.ref_path = ref_path if role == "actor" else None  # a frozen reference in this process (colocated)
        self.algo = {**ALGO_DEFAULTS, **{k: v for k, v in (algo_cfg or {}).items() if v is not None}}
        self.mcfg = {**MODEL_DEFAULTS, **{k: v for k, v in (model_cfg or {}).items() if v is not None}}
        self.seed, self.steps = seed, 0
        self.model = self.ref_model = self.optimizer = self.scheduler = self._sync_group = None
        torch.set_num_threads(max(1, int(threads)))
        torch.manual_seed(seed)  # same seed on every rank: the value head starts identical everywhere
        random.seed(seed)

    def node_info(self) -> dict:
        """This worker's node and a free port on it (rank 0's are the rendezvous of the group)."""
        ip = ray.util.get_node_ip_address()
        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ip, "port": free_port("")}

    def setup(self, master_addr: Optional[str] = None, master_port: Optional[int] = None) -> dict:
        """Join the process group (at the address given here or in __init__), load and shard the model."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        t0 = time.time()
        if master_addr is not None:
            self.master = f"tcp://{master_addr}:{int(master_port)}"
        if self.device == "cuda":
            torch.cuda.set_device(0)  # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES
        dist.init_process_group("nccl" if self.device == "cuda" else "gloo", init_method=self.master,
                                rank=self.rank, world_size=self.world_size)
        self.model, self.hf_config = _load_model(self.model_path, self.mcfg, self.role)
        self.model.to(self.device)
        if self.role != "ref":
            freeze_lower_layers(self.model, self.mcfg["trainable_layers"])
        if self.ref_path:
            self.ref_model = _load_model(self.ref_path, self.mcfg, "ref")[0].to(self.device).requires_grad_(False)
        mp = None
        if self.device == "cuda" and self.mcfg["dtype"] in ("bfloat16", "bf16", "float16", "fp16"):
            low = torch.bfloat16 if self.mcfg["dtype"].startswith("b") else torch.float16
            mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
        mesh = init_device_mesh(self.device, (self.world_size,))
        kw = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
        for model in [m for m in (self.model, self.ref_model) if m is not None]:
            for layer in decoder_layers(model):
                fully_shard(layer, **kw)
            fully_shard(model, **kw)
        if self.role != "ref":
            lr = self.algo["critic_lr"] if self.role == "critic" else self.algo["lr"]
            a = self.algo
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=a["weight_decay"])
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(
                s, int(a["warmup_steps"]), int(a["total_steps"]), a["lr_schedule"], float(a["min_lr_ratio"])))
        else:
            self.model.requires_grad_(False)
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"rank": self.rank, "role": self.role, "params": int(n_params), "trainable_params": int(n_train),
                "setup_s": time.time() - t0,
                "colocated_reference": self.ref_model is not None}

    # ---- forward passes (no grad). Every rank must call these the same number of times.
    def _mb_iter(self, batch):
        for mb in micro_batches(batch, int(self.algo["micro_batch_size"])):
            mb, T = trim_padding(mb)  # drop all-padding tail columns: less compute, same result
            yield {k: v.to(self.device) for k, v in mb.items()}, T

    def _values(self, mb):
        return self.model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])  # the Critic's [B, T]

    def _lm(self, mb, model=None):
        """(logits from column `start` on, the micro-batch cut to those columns, start): the whole sequence is
        attended to, but the output layer skips the prompt-only columns (zs_ray.core.batch.response_window)."""
        start = response_window(mb)
        keep = int(mb["input_ids"].shape[1]) - start
        out = (model or self.model)(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], logits_to_keep=keep)
        return out.logits, from_column(mb, start), start

    @torch.no_grad()
    def compute_logprobs(self, batch: dict, with_entropy: bool = False, reference: bool = False) -> dict:
        """Log-probs of this worker's model, or (reference=True) of the colocated frozen reference."""
        if reference and self.ref_model is None:
            raise ValueError("compute_logprobs(reference=True): this worker holds no reference model "
                             "(PolicyWorker(ref_path=...) with role 'actor')")
        model = self.ref_model if reference else self.model
        model.eval()
        lps, ents = [], []
        for mb, T in self._mb_iter(batch):
            logits, sub, start = self._lm(mb, model)
            full = lambda x: pad_columns(torch.nn.functional.pad(x, (start, 0)).cpu(), T)  # noqa: E731
            lps.append(full(token_logprobs(logits, sub["input_ids"])))
            if with_entropy:
                ents.append(full(token_entropy(logits)))
        out = {"logprobs": torch.cat(lps)}
        if with_entropy:
            out["entropy"] = torch.cat(ents)
        return out

    @torch.no_grad()
    def compute_values(self, batch: dict) -> dict:
        assert self.role == "critic", "compute_values needs role='critic'"
        self.model.eval()
        vals = [pad_columns(self._values(mb).cpu() * mb["attention_mask"].cpu(), T) for mb, T in self._mb_iter(batch)]
        return {"values": torch.cat(vals)}

    # ---- training steps
    def update(self, batch: dict, global_tokens: int) -> dict:
        """One optimiser step per epoch over the whole (global) batch; stats are global means."""
        assert self.role == "actor", "update needs role='actor'"
        if "advantages" not in batch:
            raise ValueError("update: the batch needs 'advantages' ([B] per trajectory or [B, T] per token)")
        if self.algo["epochs"] > 1 and "old_logprobs" not in batch:  # must stay fixed across epochs
            batch = {**batch, "old_logprobs": self.compute_logprobs(batch)["logprobs"]}
        return self._train(batch, global_tokens,
                           lambda mb: actor_microbatch_loss(*self._lm(mb)[:2], global_tokens, self.algo))

    def update_critic(self, batch: dict, global_tokens: int) -> dict:
        """Clipped value loss (clip = algo.value_clip, 0.5) against batch['returns'], old batch['values']."""
        assert self.role == "critic", "update_critic needs role='critic'"
        missing = {"values", "returns"} - set(batch)
        if missing:
            raise ValueError(f"update_critic: the batch needs {sorted(missing)} (old values and GAE returns, [B, T])")

        def loss_fn(mb):
            v = self._values(mb)
            loss = value_loss(v, mb["values"], mb["returns"], mb["loss_mask"], global_tokens, self.algo["value_clip"])
            vmean = (v.detach() * mb["loss_mask"]).sum() / max(global_tokens, 1)
            return loss, {"vf_loss": loss.detach(), "value_mean": vmean}
        return self._train(batch, global_tokens, loss_fn)

    def _train(self, batch, global_tokens, loss_fn) -> dict:
        self.model.train()
        sums: dict = defaultdict(float)
        epochs = max(1, int(self.algo["epochs"]))
        for _ in range(epochs):
            for mb, _T in self._mb_iter(batch):
                loss, stats = loss_fn(mb)
                # FSDP2 *averages* gradients over ranks; the loss is already a global token-mean
                # (divided by global_tokens), so scale by world_size to get the plain sum.
                (loss * self.world_size).backward()
                for k, v in stats.items():
                    sums[k] += float(v) / epochs
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                       self.algo["grad_clip"])
            sums["grad_norm"] += _as_float(grad_norm) / epochs  # already global (same on every rank)
            sums["lr"] += self.optimizer.param_groups[0]["lr"] / epochs
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps += 1
        keys = sorted(k for k in sums if k not in ("grad_norm", "lr"))  # same order on every rank
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)  # per-rank partial sums of global token-means -> global token-means
        out = {k: float(v) for k, v in zip(keys, t.tolist())}
        out.update(grad_norm=sums["grad_norm"], lr=sums["lr"], step=self.steps, tokens=int(global_tokens))
        return out

    # ---- weights and checkpoints
    def full_state_dict(self) -> dict:
        """Unsharded weights with HF key names on rank 0 (CPU), {} on other ranks (all must call)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _trains_all(self) -> bool:
        return all(p.requires_grad for p in self.model.parameters())

    def _synced_items(self) -> list:
        """(name, sharded tensor) of what the rollout engines must receive: the trainable parameters when
        model.trainable_layers froze the rest (the engines loaded the frozen ones from the same folder at
        start-up and they never change), else every tensor."""
        sd = self.model.state_dict()
        if self._trains_all():
            return list(sd.items())
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return [(k, v) for k, v in sd.items() if k in trainable]

    def sync_state_dict(self) -> dict:
        """What the engines need (see _synced_items), unsharded on rank 0 (CPU), {} on other ranks (all must call)."""
        if self._trains_all():
            return self.full_state_dict()
        out = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu() for k, v in self._synced_items()}
        return out if self.rank == 0 else {}

    def init_weight_sync(self, host: str, port: int, world_size: int, timeout_s: float) -> list:
        """Rank 0 only: open the NCCL weight-sync group as its rank 0; returns the receivers' (name, dtype, shape)."""
        if self._sync_group is not None:
            self._sync_group.close()
        self._sync_group = NcclGroup(host, port, 0, world_size, timeout_s)
        return pack_meta(self._synced_items())

    def broadcast_weights(self) -> int:
        """All ranks (each full parameter is an FSDP all-gather); rank 0 broadcasts it. Returns bytes sent."""
        return broadcast_state(self._synced_items(), self._sync_group if self.rank == 0 else None)

    def save_checkpoint(self, ckpt_dir: str) -> str:
        """Sharded DCP save of model + optimizer; scheduler, step count and RNG per rank (torch.save)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        os.makedirs(ckpt_dir, exist_ok=True)
        if self.rank == 0:  # overwrite cleanly: no stale shards / rank files from an earlier world size
            shutil.rmtree(os.path.join(ckpt_dir, "dcp"), ignore_errors=True)
            for name in os.listdir(ckpt_dir):
                if name.startswith("extra_rank") or name == "meta.json":
                    os.remove(os.path.join(ckpt_dir, name))
        dist.barrier()
        # get_state_dict on an optimiser that never stepped initialises it with step=1 and zero
        # moments, which would change the next step's bias correction: save no optimiser state then.
        with_optim = self.optimizer is not None and self.steps > 0
        if with_optim:
            msd, osd = get_state_dict(self.model, self.optimizer)
            state = {"model": msd, "optim": osd}
        else:
            state = {"model": get_model_state_dict(self.model)}
        dcp.save(state, checkpoint_id=os.path.join(ckpt_dir, "dcp"))
        extra = {"steps": self.steps, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler else None}
        if self.device == "cuda":
            extra["cuda_rng"] = torch.cuda.get_rng_state()
        torch.save(extra, os.path.join(ckpt_dir, f"extra_rank{self.rank}.pt"))
        if self.rank == 0:
            with open(os.path.join(ckpt_dir, "meta.json"), "w") as f:
                json.dump({"role": self.role, "world_size": self.world_size, "steps": self.steps,
                           "with_optim": with_optim, "model_path": self.model_path}, f)
        dist.barrier()  # the checkpoint is complete when every rank returns
        return ckpt_dir

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                             set_state_dict)

        with open(os.path.join(ckpt_dir, "meta.json")) as f:
            meta = json.load(f)
        if meta["role"] != self.role:
            raise ValueError(f"checkpoint {ckpt_dir} holds a {meta['role']!r} model, this worker is {self.role!r}")
        path = os.path.join(ckpt_dir, "dcp")
        if meta["with_optim"] and self.optimizer is not None:
            msd, osd = get_state_dict(self.model, self.optimizer)
            state = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=path)
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
        else:
            state = {"model": get_model_state_dict(self.model)}
            dcp.load(state, checkpoint_id=path)
            set_model_state_dict(self.model, state["model"])
            if self.optimizer is not None:
                self.optimizer.state.clear()  # the saved state had never stepped: fresh moments
        # DCP reshards model/optimiser to any world size; per-rank extras fall back to rank 0's.
        f = os.path.join(ckpt_dir, f"extra_rank{self.rank}.pt")
        extra = torch.load(f if os.path.exists(f) else os.path.join(ckpt_dir, "extra_rank0.pt"), weights_only=True)
        self.steps = int(extra["steps"])
        torch.set_rng_state(extra["torch_rng"])
        random.setstate(_as_tuple(extra["py_rng"]))
        if "cuda_rng" in extra and self.device == "cuda":
            torch.cuda.set_rng_state(extra["cuda_rng"])
        if self.scheduler is not None and extra["scheduler"] is not None:
            self.scheduler.load_state_dict(extra["scheduler"])
            # The scheduler's state does not include the optimiser's current lr (that lives in the
            # optimiser state, absent when the checkpoint never stepped): set it explicitly.
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr
        dist.barrier()
        return meta

    def export_hf(self, out_dir: str, tokenizer_src: Optional[str] = None) -> Optional[str]:
        """Rank 0 writes a Hugging Face folder (safetensors + config + tokenizer); all ranks must call."""
        sd = self.full_state_dict()
        if self.rank == 0:
            from safetensors.torch import save_file
            from transformers import AutoModelForCausalLM, AutoTokenizer

            os.makedirs(out_dir, exist_ok=True)
            lm = AutoModelForCausalLM.from_config(self.hf_config, dtype=torch.float32,
                                                  trust_remote_code=self.mcfg["trust_remote_code"])
            if self.role == "critic":  # backbone as a causal LM folder + the value head beside it
                head = {k: v.contiguous() for k, v in sd.items() if k.startswith("value_head.")}
                save_file(head, os.path.join(out_dir, "value_head.safetensors"))
                lm.load_state_dict({k: v for k, v in sd.items() if k not in head}, strict=False)
            else:
                lm.load_state_dict(sd, strict=True)
            _copy_generation_config(lm, self.model_path)
            lm.save_pretrained(out_dir, safe_serialization=True)
            AutoTokenizer.from_pretrained(tokenizer_src or self.model_path,
                                          trust_remote_code=self.mcfg["trust_remote_code"]).save_pretrained(out_dir)
        dist.barrier()
        return out_dir if self.rank == 0 else None

    def shutdown(self) -> bool:
        if dist.is_initialized():
            dist.destroy_process_group()
        return True


def _load_model(path: str, mcfg: dict, role: str):
    """The HF causal LM (or Critic around its backbone) and its config.

    Master weights are fp32 (the optimiser state must be); bf16 only as FSDP compute dtype on GPU.
    (Module-level, not a method: Ray pickles actor methods by value, and a method that touches
    `.config` next to `torch.distributed` drags the unpicklable torch.distributed.config along.)
    """
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                              attn_implementation=mcfg["attn_implementation"],
                                              trust_remote_code=mcfg["trust_remote_code"])
    if mcfg["gradient_checkpointing"] and role != "ref":
        lm.gradient_checkpointing_enable()
    cfg = lm.config
    return (Critic(lm.model, cfg.hidden_size) if role == "critic" else lm), cfg


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _copy_generation_config(lm, model_path):
    try:
        from transformers import GenerationConfig
        lm.generation_config = GenerationConfig.from_pretrained(model_path)
    except Exception:  # a model folder without generation_config.json keeps the default
        pass
