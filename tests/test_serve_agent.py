"""The served agent (actors/agent_server.py via jobs/serve.py): tiny random policy on the HF engine,
BM25 over a small corpus, loopback HTTP on a free port; /ask, the chat route, and 100 concurrent
questions with nothing dropped."""
import asyncio
import json

import pytest

from zs_ray.runtime import free_port

pytestmark = pytest.mark.integration

CORPUS = [
    {"id": "1", "contents": "\"Zorland\"\nZorland is a country. Its capital is Karova."},
    {"id": "2", "contents": "\"Karova\"\nKarova was founded by Milo Tesh in 1821."},
    {"id": "3", "contents": "\"Milo Tesh\"\nMilo Tesh was an explorer born in Zorland."},
]


@pytest.fixture(scope="module")
def agent_url(ray_session, tiny_assets, tmp_path_factory):
    from omegaconf import OmegaConf

    from jobs.serve import main

    d = tmp_path_factory.mktemp("serve")
    with open(d / "corpus.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in CORPUS) + "\n")
    cfg = {"model": {"policy_path": tiny_assets["model"]},
           "search": {"backend": "bm25", "corpus": str(d / "corpus.jsonl"), "topk": 2,
                      "http_host": "127.0.0.1", "http_port": free_port()},
           "rollout": {"engine": "hf", "max_turns": 1, "max_turn_tokens": 8, "max_context_tokens": 512},
           "trainer": {"output_dir": str(d / "run")}, "tracking": {"enabled": False}}
    OmegaConf.save(OmegaConf.create(cfg), d / "serve.yaml")
    # A route prefix of our own: other tests may run a simulator app at "/" in the same Serve.
    assert main([str(d / "serve.yaml"), "--once", "--name", "zs-test-agent", "--route-prefix", "/zsagent"]) == 0
    from actors.agent_server import http_url
    url = http_url("/zsagent")
    assert url.startswith("http://127.0.0.1:")
    yield url
    from ray import serve
    serve.delete("zs-test-agent")


def _check_ask(body: dict, question: str):
    assert set(body) >= {"answer", "searches", "documents", "trajectory"}
    assert body["question"] == question.rstrip("?") + "?"
    assert isinstance(body["searches"], list) and all(isinstance(q, str) for q in body["searches"])
    assert isinstance(body["documents"], list) and len(body["documents"]) == len(body["searches"])
    assert body["answer"] is None or isinstance(body["answer"], str)
    assert isinstance(body["trajectory"], str) and body["finish_reason"] in ("answer", "max_turns", "context_limit")


def test_ask_and_chat_routes(agent_url):
    import requests

    r = requests.post(f"{agent_url}/ask", json={"question": "What is the capital of Zorland"}, timeout=60)
    assert r.status_code == 200, r.text
    _check_ask(r.json(), "What is the capital of Zorland")

    chat = {"model": "agent", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "ignored earlier question"},
                                           {"role": "assistant", "content": "ok"},
                                           {"role": "user", "content": "Who founded Karova?"}]}
    r = requests.post(f"{agent_url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(out["choices"][0]["message"]["content"], str)
    assert out["zs_ray"]["question"] == "Who founded Karova?"  # the last user message is the question
    assert out["usage"]["completion_tokens"] > 0

    assert requests.post(f"{agent_url}/ask", json={"q": "x"}, timeout=30).status_code == 400
    assert requests.post(f"{agent_url}/v1/chat/completions", json={"messages": []}, timeout=30).status_code == 400
    assert requests.get(f"{agent_url}/healthz", timeout=30).json()["search"] == "bm25"


def test_openai_client_if_installed(agent_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{agent_url}/v1", api_key="unused", max_retries=0, timeout=60)
    out = client.chat.completions.create(model="agent", messages=[{"role": "user", "content": "Who is Milo Tesh?"}])
    assert isinstance(out.choices[0].message.content, str)


def test_100_concurrent_questions_nothing_dropped(agent_url):
    import httpx

    questions = [f"Question number {i}: where was Milo Tesh born" for i in range(100)]

    async def go():
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*[client.post(f"{agent_url}/ask", json={"question": q}) for q in questions])

    responses = asyncio.run(go())
    assert len(responses) == 100
    assert [r.status_code for r in responses] == [200] * 100
    bodies = [r.json() for r in responses]
    for q, b in zip(questions, bodies):
        _check_ask(b, q)  # each answer belongs to its own question: nothing crossed or lost
    import requests
    health = requests.get(f"{agent_url}/healthz", timeout=30).json()
    assert health["max_inflight"] > 10  # the questions ran concurrently on the engine, not one by one


def test_a_failing_replica_stops_the_deploy_with_its_error(ray_session, tiny_assets, tmp_path):
    """A constructor that raises (here: the corpus is gone; `zs-ray serve` checks files first, so the deploy is
    called directly) stops the deploy at once with the replica's error, and the app is deleted, not retried."""
    import time

    from ray import serve

    from actors.agent_server import DeployError, deploy_agent
    from zs_ray.config import load_config, to_dict

    cfg = to_dict(load_config(None, [f"model.policy_path={tiny_assets['model']}", "search.backend=bm25",
                                     f"search.corpus={tmp_path}/gone.jsonl", "rollout.engine=hf",
                                     f"search.http_port={free_port()}", "tracking.enabled=false"]))
    t0 = time.monotonic()
    with pytest.raises(DeployError, match="gone.jsonl"):
        deploy_agent(cfg, name="zs-test-broken", route_prefix="/zsbroken", timeout_s=300)
    assert time.monotonic() - t0 < 240
    assert "zs-test-broken" not in serve.status().applications
