"""The search simulator as a Ray Serve deployment: a frozen LLM on a vLLM engine (DESIGN.md §3).

- `simulate(query, question, answer, noisy, k, mode)` is what rollout workers call by handle.
- `/v1/chat/completions`, `/v1/completions`, `/v1/models` make the same replica an
  OpenAI-compatible server (for external tools, and the `http` search backend).
Every request, from either path, goes through one `@serve.batch` queue that calls one batched
`llm.generate` in a worker thread: the engine is not thread-safe, and the thread keeps the
replica's event loop free to accept (and batch) more requests while the engine runs.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from ray import serve

from zs_ray.simulator_prompts import cut_at_next_doc, parse_documents, simulator_prompt

app = FastAPI(title="zs-ray search simulator")

# SearchConfig defaults (a plain dict travels to the replica; OmegaConf objects need not).
DEFAULTS = dict(temperature=0.8, top_p=1.0, max_tokens=600, max_query_chars=512, max_batch_size=32,
                batch_wait_timeout_s=0.02, max_model_len=2048, kv_cache_gb=1.0, tensor_parallel_size=1,
                quantization=None, http_host="127.0.0.1", http_port=8000)


def _mean_logprob_of_kept(token_strs: list[str], logprobs: list[float], kept_chars: int) -> Optional[float]:
    """Mean log-prob of the tokens that produced the kept text (before the `Doc k+1` cut)."""
    total, n, pos = 0.0, 0, 0
    for s, lp in zip(token_strs, logprobs):
        if n and pos >= kept_chars:
            break
        total, n, pos = total + lp, n + 1, pos + len(s)
    return total / n if n else None


@serve.deployment
@serve.ingress(app)
class SimulatorServer:
    def __init__(self, model_path: str, search_cfg: Optional[dict] = None, seed: int = 0):
        from zs_ray.runtime import apply_local_env

        apply_local_env()
        import torch
        from vllm import LLM

        self.cfg = {**DEFAULTS, **{k: v for k, v in (search_cfg or {}).items() if v is not None}}
        self.model_name = str(self.cfg.get("model_name") or model_path)
        gpu = torch.cuda.is_available()
        kw: dict[str, Any] = dict(model=model_path, dtype="auto" if gpu else "float32",
                                  max_model_len=int(self.cfg["max_model_len"]), enforce_eager=True, seed=seed,
                                  max_num_seqs=max(int(self.cfg["max_batch_size"]), 1))
        if gpu:  # the large path: tensor parallel and AWQ/GPTQ weights, as configured
            kw.update(tensor_parallel_size=int(self.cfg["tensor_parallel_size"]),
                      quantization=self.cfg["quantization"],
                      gpu_memory_utilization=float(self.cfg.get("gpu_memory_utilization", 0.3)))
        else:  # in-process engine, KV cache of search.kv_cache_gb
            from zs_ray.engine import cpu_kv_cache_kwargs

            kw.update(distributed_executor_backend="uni", **cpu_kv_cache_kwargs(self.cfg["kv_cache_gb"]))
        self.llm = LLM(**kw)
        self.tokenizer = self.llm.get_tokenizer()
        self._generate.set_max_batch_size(int(self.cfg["max_batch_size"]))
        self._generate.set_batch_wait_timeout_s(float(self.cfg["batch_wait_timeout_s"]))
        self.batch_sizes: list[int] = []

    # ------------------------------------------------------------- engine --------------------------

    def _encode(self, messages: Optional[list] = None, prompt: Optional[str] = None) -> list[int]:
        tok = self.tokenizer
        if messages is not None:
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:  # no template: plain concatenation of the turns
                text = "\n".join(str(m.get("content", "")) for m in messages) + "\n"
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(prompt or "")["input_ids"]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.02)
    async def _generate(self, reqs: list[tuple[list[int], dict]]) -> list[dict]:
        from vllm import SamplingParams, TokensPrompt

        self.batch_sizes.append(len(reqs))
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in reqs]
        params = [SamplingParams(**kw) for _, kw in reqs]
        outs = await asyncio.to_thread(self.llm.generate, prompts, params, use_tqdm=False)
        results = []
        for (ids, _), out in zip(reqs, outs):
            choices = []
            for c in out.outputs:
                lps, toks = [], []
                for tid, d in zip(c.token_ids, c.logprobs or []):
                    lp = d.get(tid) if d else None
                    lps.append(float(lp.logprob) if lp is not None else 0.0)
                    toks.append((lp.decoded_token if lp is not None else None) or "")
                choices.append(dict(text=c.text, token_ids=list(c.token_ids), logprobs=lps, tokens=toks,
                                    finish_reason=c.finish_reason or "stop"))
            results.append(dict(choices=choices, prompt_tokens=len(ids)))
        return results

    def _params(self, n_prompt: int, temperature=None, top_p=None, max_tokens=None, n=1, stop=None,
                seed=None) -> dict:
        room = int(self.cfg["max_model_len"]) - n_prompt
        if room < 1:
            raise ValueError(f"prompt of {n_prompt} tokens leaves no room under max_model_len="
                             f"{self.cfg['max_model_len']}")
        mt = int(max_tokens if max_tokens is not None else self.cfg["max_tokens"])
        return dict(temperature=float(self.cfg["temperature"] if temperature is None else temperature),
                    top_p=float(self.cfg["top_p"] if top_p is None else top_p),
                    max_tokens=max(1, min(mt, room)), n=int(n), stop=stop or None, seed=seed, logprobs=0)

    # ------------------------------------------------------------- simulator API -------------------

    async def simulate(self, query: str, question: str, answer: str, noisy: bool, k: int = 5,
                       mode: str = "simulate_sft") -> dict:
        query = str(query)[: int(self.cfg["max_query_chars"])]
        text = simulator_prompt(mode, query, question, answer, noisy=bool(noisy), k=int(k))
        ids = self._encode(messages=[{"role": "user", "content": text}])
        res = await self._generate((ids, self._params(len(ids))))
        c = res["choices"][0]
        parsed = parse_documents(c["text"], int(k))
        kept = len(cut_at_next_doc(c["text"], int(k)))
        return dict(docs=parsed.docs, mean_logprob=_mean_logprob_of_kept(c["tokens"], c["logprobs"], kept),
                    dropped_chars=parsed.dropped_chars, noisy=bool(noisy))

    def stats(self) -> dict:
        b = self.batch_sizes
        return dict(batches=len(b), requests=sum(b), max_batch=max(b, default=0),
                    mean_batch=(sum(b) / len(b)) if b else 0.0)

    # ------------------------------------------------------------- OpenAI-compatible routes ---------

    @app.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "zs-ray",
                                            "created": 0}]}

    async def _openai(self, body: dict, ids: list[int]) -> dict:
        if body.get("stream"):
            raise HTTPException(400, "stream=true is not supported by the zs-ray simulator route")
        stop = body.get("stop")
        try:
            params = self._params(len(ids), body.get("temperature"), body.get("top_p"),
                                  body.get("max_tokens") or body.get("max_completion_tokens"),
                                  body.get("n") or 1, [stop] if isinstance(stop, str) else stop, body.get("seed"))
        except ValueError as e:
            raise HTTPException(400, str(e))
        return await self._generate((ids, params))

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: dict) -> dict:
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPException(400, "'messages' must be a non-empty list")
        res = await self._openai(body, self._encode(messages=body["messages"]))
        choices = []
        for i, c in enumerate(res["choices"]):
            ch = {"index": i, "message": {"role": "assistant", "content": c["text"]},
                  "finish_reason": c["finish_reason"], "logprobs": None}
            if body.get("logprobs"):
                ch["logprobs"] = {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                                               "top_logprobs": []} for t, lp in zip(c["tokens"], c["logprobs"])]}
            choices.append(ch)
        return self._envelope("chat.completion", body, choices, res)

    @app.post("/v1/completions")
    async def completions(self, body: dict) -> dict:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise HTTPException(400, "one prompt per request (send several requests to batch)")
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise HTTPException(400, "'prompt' must be a string")
        res = await self._openai(body, self._encode(prompt=prompt))
        choices = []
        for i, c in enumerate(res["choices"]):
            ch = {"index": i, "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None}
            if body.get("logprobs") is not None:
                offs, pos = [], 0
                for t in c["tokens"]:
                    offs.append(pos)
                    pos += len(t)
                ch["logprobs"] = {"tokens": c["tokens"], "token_logprobs": c["logprobs"],
                                  "top_logprobs": None, "text_offset": offs}
            choices.append(ch)
        return self._envelope("text_completion", body, choices, res)

    def _envelope(self, obj: str, body: dict, choices: list, res: dict) -> dict:
        n_out = sum(len(c["token_ids"]) for c in res["choices"])
        return {"id": f"zs-{uuid.uuid4().hex[:16]}", "object": obj, "created": int(time.time()),
                "model": body.get("model") or self.model_name, "choices": choices,
                "usage": {"prompt_tokens": res["prompt_tokens"], "completion_tokens": n_out,
                          "total_tokens": res["prompt_tokens"] + n_out}}


def deploy_simulator(search_cfg: dict, model_path: str, name: str = "simulator", replicas: int = 1,
                     max_replicas: Optional[int] = None, num_cpus: float = 0.5, num_gpus: float = 0.0,
                     seed: int = 0, threads: int = 1, route_prefix: Optional[str] = "/"):
    """Deploy (or update) the simulator app `name`; returns its DeploymentHandle.
    max_replicas > replicas turns on Serve autoscaling between the two. HTTP binds to
    search_cfg http_host:http_port (127.0.0.1 by default) when Serve is not running yet."""
    from zs_ray.runtime import actor_env

    cfg = {**DEFAULTS, **dict(search_cfg or {})}
    serve.start(http_options={"host": cfg["http_host"], "port": int(cfg["http_port"])})
    batch = int(cfg["max_batch_size"])
    opts: dict[str, Any] = dict(
        name=name,
        # Room for a full batch plus the next one queueing, so batching is never starved.
        max_ongoing_requests=max(2 * batch, 8),
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus,
                           "runtime_env": {"env_vars": actor_env(threads)}},
    )
    if max_replicas and max_replicas > replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": int(max_replicas),
                                      "target_ongoing_requests": batch}
    else:
        opts["num_replicas"] = replicas
    target = SimulatorServer.options(**opts).bind(model_path, cfg, seed)
    return serve.run(target, name=name, route_prefix=route_prefix)


def shutdown(name: Optional[str] = None) -> None:
    """Delete one simulator app (name given) or stop Serve entirely."""
    if name:
        serve.delete(name)
    else:
        serve.shutdown()
