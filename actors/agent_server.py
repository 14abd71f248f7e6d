"""The trained search agent as a Ray Serve application: policy engine + real search (README, "Architecture").

- `POST /ask {"question": ...}` -> `{"answer", "searches": [queries], "documents": [[docs of each
  search]], "trajectory": decoded multi-turn response, ...}`.
- `POST /v1/chat/completions` (OpenAI-compatible): the last user message is the question, the
  answer text is the completion (the full trajectory is under `zs_ray`).
- `GET /healthz`, `GET /v1/models`.

Each request is one `zs_ray.core.rollout.run_trajectory` coroutine (greedy) on the replica's event loop;
the engine batches whatever is in flight (vLLM continuous batching, or the HF engine's step
batches), so concurrent questions share forward passes. `max_ongoing_requests` is set high so
Serve lets them all into the replica instead of queueing them one by one.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from ray import serve

app = FastAPI(title="zs-ray search agent")


@serve.deployment
@serve.ingress(app)
class AgentServer:
    def __init__(self, cfg: dict):
        """`cfg`: the plain (resolved) zs-ray config dict; the replica builds engine and search."""
        from omegaconf import OmegaConf

        from zs_ray.runtime import apply_local_env, set_threads

        apply_local_env()
        set_threads(int(cfg.get("resources", {}).get("threads_per_actor", 1)))
        from zs_ray.core.rollout import as_rollout_config
        from zs_ray.eval.evaluation import RecordingSearch, build_engine
        from zs_ray.search.clients import make_search_backend

        self.cfg = OmegaConf.create(cfg)
        self.model_name = str(self.cfg.model.policy_path)
        self.engine = build_engine(self.cfg)
        # No curriculum: a served agent never asks a simulator for noisy documents.
        self.search = RecordingSearch(make_search_backend(cfg["search"], None, seed=int(cfg["trainer"]["seed"])))
        self.rollout_cfg = as_rollout_config(cfg["rollout"])
        self.max_query_chars = int(cfg["search"].get("max_query_chars", 512))
        self.served = self.inflight = self.max_inflight = 0  # max_inflight > 1 shows questions were batched

    async def answer(self, question: str) -> dict:
        """Run the agent on one question (also callable by deployment handle)."""
        from zs_ray.core.protocol import normalize_question
        from zs_ray.core.rollout import run_trajectory

        if not isinstance(question, str) or not question.strip():
            raise ValueError("'question' must be a non-empty string")
        pid = f"ask/{uuid.uuid4().hex}"
        row = {"prompt_id": pid, "data_source": "serve", "question": normalize_question(question),
               "golden_answers": []}
        t = time.perf_counter()
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            traj = await run_trajectory(self.engine, self.search, row, sample_index=0, rollout_cfg=self.rollout_cfg,
                                        step=0, greedy=True, seed=0,
                                        max_query_chars=self.max_query_chars)
        finally:
            self.inflight -= 1
            calls = self.search.pop(pid)  # never leak an entry, even when the trajectory failed
        self.served += 1
        return {"question": row["question"], "answer": traj.answer,
                "searches": [c["query"] for c in calls], "documents": [c["documents"] for c in calls],
                "trajectory": self.engine.tokenizer.decode(traj.response_ids, skip_special_tokens=True),
                "finish_reason": traj.finish_reason, "invalid_actions": traj.invalid_actions,
                "prompt_tokens": len(traj.prompt_ids), "response_tokens": len(traj.response_ids), "latency_s": time.perf_counter() - t}

    @app.post("/ask")
    async def ask(self, body: dict) -> dict:
        q = body.get("question") if isinstance(body, dict) else None
        if not isinstance(q, str) or not q.strip():
            raise HTTPException(400, "body must be {\"question\": \"...\"}")
        return await self.answer(q)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, body: dict) -> dict:
        if body.get("stream"):
            raise HTTPException(400, "stream=true is not supported by the zs-ray agent route")
        msgs = body.get("messages")
        users = [m for m in msgs or [] if isinstance(m, dict) and m.get("role") == "user"]
        q = users[-1].get("content") if users else None
        if isinstance(q, list):  # OpenAI content parts: keep the text parts
            q = " ".join(p.get("text", "") for p in q if isinstance(p, dict))
        if not isinstance(q, str) or not q.strip():
            raise HTTPException(400, "'messages' must hold a user message with the question")
        res = await self.answer(q)
        content = res["answer"] if res["answer"] is not None else ""
        n_prompt = res["prompt_tokens"]
        return {"id": f"zs-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop" if res["answer"] is not None else "length",
                             "logprobs": None}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": res["response_tokens"],
                          "total_tokens": n_prompt + res["response_tokens"]},
                "zs_ray": res}

    @app.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "zs-ray",
                                            "created": 0}]}

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"ok": True, "served": self.served, "max_inflight": self.max_inflight,
                "search": getattr(self.search, "name", "?")}


def http_url(route_prefix: str = "/") -> str:
    """Base URL of the running Serve proxy for an app at `route_prefix` (loopback by default)."""
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    return f"http://{host}:{http.port}{route_prefix.rstrip('/')}"


class DeployError(RuntimeError):
    """A Serve app did not come up; the message holds the replica's error."""


FAILED = ("DEPLOY_FAILED", "UNHEALTHY")


def deploy_problem(app_status) -> Optional[str]:
    """Why an app (a `serve.status().applications[name]` entry) has failed, or None while it is fine or still
    starting. A replica whose constructor raised counts at once: its error (a missing file, a bad model) is
    the same on every retry, so Serve's re-adding it only repeats the failure."""
    problems = []
    if str(getattr(app_status.status, "value", app_status.status)) in FAILED and app_status.message:
        problems.append(app_status.message)
    for dep_name, dep in app_status.deployments.items():
        status = str(getattr(dep.status, "value", dep.status))
        trigger = str(getattr(dep.status_trigger, "value", dep.status_trigger))
        if status in FAILED or trigger == "REPLICA_STARTUP_FAILED":
            problems.append(f"deployment {dep_name} is {status}: {dep.message}")
    return "\n".join(problems) or None


def wait_running(name: str, timeout_s: float = 900.0, poll_s: float = 0.5) -> None:
    """Poll the app until RUNNING; on a failed replica (deploy_problem) or the timeout, delete the app (so Serve
    stops re-adding replicas) and raise DeployError with the replica's error."""
    t0 = time.monotonic()
    while True:
        app = serve.status().applications.get(name)
        status = str(getattr(app.status, "value", app.status)) if app is not None else "missing"
        problem = deploy_problem(app) if app is not None else f"Serve has no application {name!r}"
        if status == "RUNNING" and problem is None:
            return
        if problem is None and time.monotonic() - t0 > timeout_s:
            problem = f"not RUNNING after {timeout_s:.0f}s (status {status})"
        if problem is not None:
            try:
                serve.delete(name)
            except Exception:  # noqa: BLE001 - the failure below is what the user needs to see
                pass
            raise DeployError(f"Serve app {name!r} failed to start, stopped and deleted:\n{problem}")
        time.sleep(poll_s)


def deploy_agent(cfg: dict, name: str = "agent", route_prefix: str = "/", replicas: int = 1,
                 num_cpus: float = 0.5, num_gpus: float = 0.0, threads: int = 1,
                 max_ongoing_requests: Optional[int] = None, timeout_s: float = 900.0) -> tuple[Any, str]:
    """Deploy (or update) the agent app; returns (DeploymentHandle, base URL). Raises DeployError, with the
    app deleted, when a replica fails to start (`wait_running`).

    HTTP binds to search.http_host:http_port (loopback by default) when Serve is not running yet;
    if it is (e.g. the simulator started it), the existing proxy is used and its URL returned.
    """
    from zs_ray.runtime import actor_env

    s = cfg["search"]
    serve.start(http_options={"host": s.get("http_host", "127.0.0.1"), "port": int(s.get("http_port", 8000))})
    ongoing = max_ongoing_requests or max(2 * int(cfg["rollout"].get("max_num_seqs", 256)), 16)
    target = AgentServer.options(
        name=name, num_replicas=replicas, max_ongoing_requests=ongoing,
        # requests beyond max_ongoing wait in the proxy instead of being rejected
        max_queued_requests=-1,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus,
                           "runtime_env": {"env_vars": actor_env(threads)}},
    ).bind(cfg)
    from ray.serve.api import _run  # serve.run without waiting for RUNNING: wait_running watches the replicas

    handle = _run(target, name=name, route_prefix=route_prefix, _blocking=False)
    wait_running(name, timeout_s)
    return handle, http_url(route_prefix)
