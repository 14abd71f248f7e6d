"""The search simulator as a Ray Serve deployment: a frozen LLM on a vLLM engine (README, "Architecture").

- `simulate(query, question, answer, noisy, k, mode, confidence)` is what rollout workers call by
  handle; `confidence=True` adds the documents' mean token log-prob (the hybrid backend's signal),
  which cost the tiny CPU simulator 10-15 % of its documents/s (BENCHMARKS.md), so it is off unless asked for.
- `/v1/chat/completions`, `/v1/completions`, `/v1/models` make the same replica an
  OpenAI-compatible server (for external tools, and the `http` search backend).
Every request, from either path, is one request to the replica's `zs_ray.engines.engine.VLLMEngine`, which
steps vLLM with continuous batching on its own thread: a call that arrives while others are being
written joins the running batch at the next step and returns as soon as its own documents are done
(a `@serve.batch` of `llm.generate` made late callers wait for the whole previous batch, and every
caller for the batch's longest output). Generation stops at `Doc k+1`: what follows is cut anyway.
"""
from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from dataclasses import asdict
from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from ray import serve

from zs_ray.config import SearchConfig
from zs_ray.core.simulator_prompts import cut_at_next_doc, parse_documents, simulator_prompt

app = FastAPI(title="zs-ray search simulator")

# The schema's search defaults, for a partial search dict (a plain dict travels to the replica).
DEFAULTS = asdict(SearchConfig())


def tokens_for_chars(tokenizer, ids: list[int], chars: int) -> int:
    """The fewest leading tokens of `ids` whose decoded text covers `chars` characters (at least 1).
    Bisects over prefix lengths: log2(n) decodes, not n."""
    n = 1 + bisect.bisect_left(range(1, len(ids) + 1), chars,
                               key=lambda i: len(tokenizer.decode(ids[:i], skip_special_tokens=True)))
    return max(1, min(len(ids), n))


def mean_logprob_of_kept(tokenizer, ids: list[int], logprobs: list[float], kept_chars: int) -> Optional[float]:
    """Mean log-prob of the tokens that produced the kept text (before the `Doc k+1` cut)."""
    if not ids:
        return None
    n = tokens_for_chars(tokenizer, ids, kept_chars)
    return sum(logprobs[:n]) / n


@serve.deployment
@serve.ingress(app)
class SimulatorServer:
    def __init__(self, model_path: str, search_cfg: Optional[dict] = None, seed: int = 0):
        from zs_ray.runtime import apply_local_env

        apply_local_env()
        import torch

        from zs_ray.engines.engine import VLLMEngine, engine_kwargs

        self.cfg = {**DEFAULTS, **{k: v for k, v in (search_cfg or {}).items() if v is not None}}
        self.model_name = str(self.cfg.get("model_name") or model_path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.engine = VLLMEngine(model_path, **engine_kwargs({"search": self.cfg}, "simulator", seed=seed,
                                                             device=device))
        self.tokenizer = self.engine.tokenizer
        self.in_flight, self.max_in_flight, self.requests = 0, 0, 0

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

    async def _generate(self, ids: list[int], params: dict) -> dict:
        """`n` samples of one prompt; each is its own engine request, batched with everything in flight."""
        n, seed, stop, want_lp = params["n"], params["seed"], params["stop"], params["logprobs"]
        self.requests += 1
        self.in_flight += n
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            gens = await asyncio.gather(*[self.engine.generate(
                ids, max_tokens=params["max_tokens"], temperature=params["temperature"], top_p=params["top_p"],
                repetition_penalty=params["repetition_penalty"],
                stop=stop, seed=None if seed is None else int(seed) + i, logprobs=want_lp) for i in range(n)])
        finally:
            self.in_flight -= n
        choices = []
        for g in gens:
            text = self.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            if g.stop_str and text.endswith(g.stop_str):  # vLLM's default: the stop string is not returned
                text = text[: -len(g.stop_str)]
            choices.append(dict(text=text, token_ids=list(g.token_ids), logprobs=g.logprobs,
                                finish_reason="length" if g.finish_reason == "length" else "stop"))
        return dict(choices=choices, prompt_tokens=len(ids))

    def _params(self, n_prompt: int, temperature=None, top_p=None, max_tokens=None, n=1, stop=None,
                seed=None, logprobs=False) -> dict:
        room = int(self.cfg["max_model_len"]) - n_prompt
        if room < 1:
            raise ValueError(f"prompt of {n_prompt} tokens leaves no room under max_model_len="
                             f"{self.cfg['max_model_len']}")
        mt = int(max_tokens if max_tokens is not None else self.cfg["max_tokens"])
        return dict(temperature=float(self.cfg["temperature"] if temperature is None else temperature),
                    top_p=float(self.cfg["top_p"] if top_p is None else top_p),
                    max_tokens=max(1, min(mt, room)), n=int(n), stop=list(stop or []), seed=seed,
                    logprobs=bool(logprobs), repetition_penalty=float(self.cfg["repetition_penalty"]))

    # ------------------------------------------------------------- simulator API -------------------

    async def simulate(self, query: str, question: str, answer: str, noisy: bool, k: int = 5,
                       mode: str = "simulate_sft", confidence: bool = False) -> dict:
        query = str(query)[: int(self.cfg["max_query_chars"])]
        text = simulator_prompt(mode, query, question, answer, noisy=bool(noisy), k=int(k))
        ids = self._encode(messages=[{"role": "user", "content": text}])
        # the documents after the k-th are cut anyway: do not write them
        params = self._params(len(ids), stop=[f"Doc {int(k) + 1}:"], logprobs=confidence)
        c = (await self._generate(ids, params))["choices"][0]
        parsed = parse_documents(c["text"], int(k))
        mean_lp = None
        if confidence:
            kept = len(cut_at_next_doc(c["text"], int(k)))
            mean_lp = mean_logprob_of_kept(self.tokenizer, c["token_ids"], c["logprobs"], kept)
        return dict(docs=parsed.docs, mean_logprob=mean_lp, dropped_chars=parsed.dropped_chars, noisy=bool(noisy))

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising makes Serve replace the replica."""
        self.engine.clock.check(self.cfg.get("stall_timeout_s"), f"simulator replica ({self.model_name})")

    def stats(self) -> dict:
        """requests served; max_in_flight: the most engine requests running at once (the largest batch)."""
        return dict(requests=self.requests, max_in_flight=self.max_in_flight, in_flight=self.in_flight)

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
                                  body.get("n") or 1, [stop] if isinstance(stop, str) else stop, body.get("seed"),
                                  # chat: logprobs true/false; completions: an int, 0 included
                                  logprobs=body.get("logprobs") is not None and body.get("logprobs") is not False)
        except ValueError as e:
            raise HTTPException(400, str(e))
        return await self._generate(ids, params)

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
                ch["logprobs"] = {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                                              for t, lp in zip(self._token_strs(c["token_ids"]), c["logprobs"])]}
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
                offs, pos, toks = [], 0, self._token_strs(c["token_ids"])
                for t in toks:
                    offs.append(pos)
                    pos += len(t)
                ch["logprobs"] = {"tokens": toks, "token_logprobs": c["logprobs"],
                                  "top_logprobs": None, "text_offset": offs}
            choices.append(ch)
        return self._envelope("text_completion", body, choices, res)

    def _token_strs(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in ids]

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
        # Room for a full engine batch plus the next calls queueing, so the engine is never starved.
        max_ongoing_requests=max(2 * batch, 8),
        # No access-log line per call: hundreds per training step, each formatted by the replica and streamed
        # to the driver. Errors are still logged.
        logging_config={"enable_access_log": False},
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
