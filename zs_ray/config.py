"""One typed configuration schema (OmegaConf structured configs over dataclasses).

`load_config(path, overrides)` merges a YAML file and `key=value` overrides onto the schema.
Unknown keys, wrong types and impossible combinations raise ConfigError naming the key.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from zs_ray.paths import resolve_config
from zs_ray.redaction import redacted
from zs_ray.weight_sync.choose import MODES as WEIGHT_SYNC_MODES
from zs_ray.weight_sync.choose import nccl_config_problem

SEARCH_BACKENDS = ("simulate_prompt", "simulate_sft", "bm25", "http", "retriever", "hybrid")
SIMULATED_BACKENDS = ("simulate_prompt", "simulate_sft", "hybrid")  # a simulator model writes (some) documents
SIMULATOR_BACKENDS = SIMULATED_BACKENDS + ("http",)  # ... or an external simulator server: the curriculum applies
ALGORITHMS = ("grpo", "ppo", "reinforce")


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # Search-R1 parquet or FlashRAG jsonl
    test_files: list[str] = field(default_factory=list)
    shuffle: bool = True


@dataclass
class ModelConfig:
    policy_path: str = MISSING
    reference_path: Optional[str] = None  # None: the initial policy
    critic_path: Optional[str] = None  # PPO; None: the initial policy with a value head
    dtype: str = "float32"  # fp32 on CPU: bf16 is 13x slower there
    attn_implementation: str = "sdpa"  # "flash_attention_2" on GPU with flash-attn installed
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    # None: every weight learns. N: only the top N decoder layers (+ final norm) of the policy and critic learn;
    # the embeddings and lower layers stay frozen, and the weight sync sends only what learns.
    trainable_layers: Optional[int] = None
    quantization: Optional[str] = None  # rollout engine (vLLM), e.g. "awq" / "gptq" / "fp8"; training is unquantized


@dataclass
class SearchConfig:
    backend: str = "simulate_sft"
    simulator_model: Optional[str] = None  # HF path of the simulation LLM (simulate_*)
    temperature: float = 0.8
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # the simulator's sampling; > 1 holds a small simulator out of repetition loops
    topk: int = 5
    max_tokens: int = 600
    corpus: Optional[str] = None  # {id, contents} jsonl for bm25
    max_doc_words: Optional[int] = None  # bm25: each passage cut to its first N words (None: whole)
    index_dir: Optional[str] = None  # saved bm25s index (built from corpus when missing)
    urls: list[str] = field(default_factory=list)  # external OpenAI-compatible simulators / retrievers
    retriever_urls: list[str] = field(default_factory=list)  # hybrid_fallback=retriever (urls are its simulator's)
    api_key: Optional[str] = None  # redacted in logs and MLflow params
    model_name: Optional[str] = None  # model name sent to an external OpenAI-compatible server
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 0.5
    hybrid_fallback: str = "bm25"  # real backend used by `hybrid` when the simulator is unsure
    hybrid_threshold: float = -2.5  # mean token log-prob below which hybrid falls back
    on_failure: str = "no_information"  # or "error"
    max_query_chars: int = 512
    # a simulator replica whose engine step has run this long fails Serve's health check and is replaced (None: never)
    stall_timeout_s: Optional[float] = 300.0
    # simulators: identical calls in one training step (same query, question, answer and noise coin) share one
    # generation, as a real engine returns one page per query: a warm-started policy's GRPO group repeats its
    # query (~60 % of calls), and the group's rewards then differ by what the policy did, not by which sample of
    # documents it drew. false: every call samples its own documents (the reference code's way)
    share_identical: bool = True
    # Serve deployment of the simulator
    max_batch_size: int = 32  # vLLM max_num_seqs of the simulator engine (continuous batching)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_model_len: int = 2048
    kv_cache_gb: float = 1.0  # vLLM CPU KV-cache space of the simulator engine (GPU: gpu_memory_utilization)
    gpu_memory_utilization: float = 0.3  # GPU share of the simulator engine (weights + KV cache)
    tensor_parallel_size: int = 1
    quantization: Optional[str] = None  # e.g. "awq" / "gptq" through vLLM
    app_name: str = "simulator"  # the Serve application of the simulator
    simulator_mode: str = "simulate_sft"  # prompt mode used by `http` and `hybrid`


@dataclass
class CurriculumConfig:
    enabled: bool = True  # false: a constant noise probability `end` from the first step (no easy-to-hard)
    start: float = 0.0
    end: float = 0.5
    base: float = 4.0
    total_steps: Optional[int] = None  # None: trainer.steps
    # call: one coin per search call (the paper's); group: one per (prompt, turn), shared by the GRPO group's
    # samples, so that their rewards differ by what the policy did rather than by its documents' coin
    coin: str = "call"


@dataclass
class RolloutConfig:
    engine: str = "vllm"  # "vllm" or "hf" (transformers generate; no vLLM needed)
    n_samples: int = 5
    temperature: float = 1.0
    top_p: float = 0.95
    max_turns: int = 5
    max_turn_tokens: int = 500
    max_obs_tokens: int = 2048
    max_context_tokens: int = 4096
    max_num_seqs: int = 256
    kv_cache_gb: float = 1.0  # vLLM CPU KV-cache space
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    seed: int = 0
    # How new weights reach the engines: object_store (Ray, CPU tensors) | nccl (broadcast from policy rank 0,
    # whole GPUs) | auto (nccl when it can run, object_store otherwise). See zs_ray/weight_sync/.
    weight_sync: str = "auto"


@dataclass
class AlgorithmConfig:
    name: str = "grpo"
    reward: str = "f1"  # f1 (ZeroSearch) | em (Search-R1)
    clip: float = 0.2
    kl_estimator: str = "k3"
    kl_coef: float = 0.001
    entropy_coef: float = 0.001
    lr: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine: down to min_lr_ratio x lr at trainer.steps
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    epochs: int = 1  # optimisation passes over each batch
    # Stale samples (trainer.staleness > 0): weight each token by pi_prox / pi_behav, the trainer's over the
    # rollout engine's probability (zs_ray.core.algorithms.behaviour_weights). none | truncate (min(w, cap)) | mask.
    behaviour_correction: str = "none"
    behaviour_weight_cap: float = 2.0
    adv_eps: float = 1e-6
    # GRPO: drop the groups whose samples all got the same reward (zero advantage) from the batch, so the
    # token-mean, KL and entropy run over the groups that carry a gradient (DAPO's dynamic sampling, without
    # re-sampling to refill the batch). Logged either way: reward/zero_var_groups.
    filter_groups: bool = False
    # PPO
    critic_lr: float = 1e-5
    critic_warmup: int = 0  # PPO: the first N steps train only the critic (verl's trainer.critic_warmup)
    value_clip: float = 0.5
    gamma: float = 1.0
    lam: float = 1.0
    kl_in_reward_beta: float = 0.001


@dataclass
class TrainerConfig:
    steps: int = 203
    prompts_per_step: int = 64
    staleness: int = 0  # 0 = synchronous; k = samples at most k policy versions old are trained on
    output_dir: str = "runs/default"
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    resume: str = "never"  # never | auto | <checkpoint path>
    seed: int = 0
    eval_every: int = 0  # held-out evaluation (greedy, real search) every K steps; 0 = off
    eval_rows: int = 100  # test rows used by that evaluation
    sample_every: int = 10  # write readable sample trajectories every K steps
    sync_timeout_s: float = 120.0
    rollout_timeout_s: float = 1800.0


@dataclass
class ResourcesConfig:
    device: str = "cpu"  # cpu | cuda
    num_cpus: Optional[float] = None  # local Ray: CPUs to advertise (bookkeeping only)
    policy_workers: int = 1
    rollout_workers: int = 1
    simulator_replicas: int = 1
    simulator_max_replicas: Optional[int] = None  # > replicas enables Serve autoscaling
    cpus_per_policy_worker: float = 0.5
    cpus_per_rollout_worker: float = 0.5
    cpus_per_simulator: float = 0.5
    gpus_per_policy_worker: float = 0.0
    gpus_per_rollout_worker: float = 0.0
    gpus_per_simulator: float = 0.0
    threads_per_actor: int = 1
    # True: the frozen KL reference shares the actor workers' processes, sharded like the policy; False: its own group
    colocate_reference: bool = True
    placement_timeout_s: float = 120.0
    policy_node_resource: Optional[str] = None  # custom resource that marks policy nodes
    rollout_node_resource: Optional[str] = None


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: sqlite:///<output_dir>/../mlflow.db
    experiment: str = "zs-ray"
    run_name: Optional[str] = None
    enabled: bool = True
    # at the run's end, how long to keep retrying metrics that wait for an unreachable store before counting them lost
    finish_wait_s: float = 60.0


@dataclass
class SimulatorSFTConfig:
    """`zs-ray simulator train`: collect (query, documents) pairs, label, balance, fine-tune, evaluate."""
    base_model: Optional[str] = None  # HF folder to fine-tune (None: a fresh tiny simulator)
    output_dir: str = "runs/simulator_sft"
    corpus: Optional[str] = None  # {id, contents} jsonl (None: search.corpus)
    questions: list[str] = field(default_factory=list)  # parquet/jsonl with question, golden_answers
    trajectories: list[str] = field(default_factory=list)  # jsonl with question, golden_answers, search_calls
    topk: int = 5
    max_questions: Optional[int] = None
    heldout_frac: float = 0.1
    max_doc_words: int = 30
    answer_first: bool = True  # useful targets lead with the answer (simulator_data.lead_with_answer)
    answer_aware: bool = True  # + a pair per question led by the passages stating its answer (multi-hop useful results)
    hop_aware: bool = False  # questions with `hops`: label each query by the hop it asks (simulator_data.pairs_from_corpus)
    answer_weight: float = 1.0  # loss weight of the tokens that copy the answer into useful documents (1 = plain SFT)
    trainable_layers: Optional[int] = None  # a pretrained base: only its top N decoder layers learn (None: all)
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3  # tiny models; the paper used 1e-6 for 3B-14B
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_questions: int = 100
    eval_temperature: float = 0.8
    eval_max_tokens: int = 200  # room for topk documents of max_doc_words words each
    eval_engine: str = "hf"  # hf (HF generate) or vllm (the engine that serves the simulator; ~3x faster on 135M)
    threads: int = 2
    seed: int = 0


@dataclass
class ZSConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    simulator_sft: SimulatorSFTConfig = field(default_factory=SimulatorSFTConfig)


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            out.append(full)
            out.extend(_all_keys(node._get_node(k), full + "."))
    return out


def _nearest(key: str, schema) -> str:
    keys = _all_keys(schema)
    m = difflib.get_close_matches(key, keys, n=1, cutoff=0.4)
    if not m:  # compare the last component only
        last = key.split(".")[-1]
        m = [k for k in keys if k.split(".")[-1] in difflib.get_close_matches(last, [x.split(".")[-1] for x in keys], n=1)]
    return f"; did you mean '{m[0]}'?" if m else ""


def _explain(e: OmegaConfBaseException, schema, source: str) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(f"{source}: unknown config key '{key}'{_nearest(key, schema)}")
    if isinstance(e, ValidationError):
        expected = ""
        try:
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(schema, parent_key) if parent_key else schema
            ref = parent._get_node(leaf)._metadata.ref_type
            expected = f" (expected {getattr(ref, '__name__', str(ref)).replace('typing.', '')})"
        except Exception:
            pass
        msg = str(e).splitlines()[0]
        return ConfigError(f"{source}: wrong type for config key '{key}'{expected}: {msg}")
    return ConfigError(f"{source}: {str(e).splitlines()[0]}")


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> DictConfig:
    """Schema <- YAML file <- `key=value` overrides; validated."""
    schema = OmegaConf.structured(ZSConfig)
    cfg = schema
    if path is not None:
        path = resolve_config(path)
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(file_cfg, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections, got {type(file_cfg).__name__}")
        try:
            cfg = OmegaConf.merge(cfg, file_cfg)
        except OmegaConfBaseException as e:
            raise _explain(e, schema, path) from None
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as e:
            raise _explain(e, schema, f"override '{ov}'") from None
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"missing value for required config key '{getattr(e, 'full_key', '')}'") from None
    validate(cfg)
    return cfg


def _check(cond: bool, key: str, msg: str):
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def validate(cfg: DictConfig) -> None:
    """Impossible combinations, each named by its key."""
    _check(cfg.search.backend in SEARCH_BACKENDS, "search.backend", f"must be one of {SEARCH_BACKENDS}")
    _check(cfg.algorithm.name in ALGORITHMS, "algorithm.name", f"must be one of {ALGORITHMS}")
    _check(cfg.algorithm.reward in ("f1", "em", "cover_em"), "algorithm.reward", "must be f1, em or cover_em")
    _check(cfg.algorithm.kl_estimator in ("k1", "k3"), "algorithm.kl_estimator", "must be k1 or k3")
    _check(cfg.algorithm.lr_schedule in ("constant", "cosine"), "algorithm.lr_schedule", "must be constant or cosine")
    _check(0.0 <= cfg.algorithm.min_lr_ratio <= 1.0, "algorithm.min_lr_ratio", "must be in [0, 1]")
    _check(cfg.algorithm.behaviour_correction in ("none", "truncate", "mask"), "algorithm.behaviour_correction",
           "must be none, truncate or mask")
    _check(cfg.algorithm.behaviour_weight_cap >= 1.0, "algorithm.behaviour_weight_cap",
           "must be >= 1 (a cap below 1 would down-weight on-policy tokens)")
    _check(not cfg.algorithm.filter_groups or cfg.algorithm.name == "grpo", "algorithm.filter_groups",
           "only applies to grpo (groups of samples of one prompt)")
    _check(cfg.algorithm.critic_warmup >= 0, "algorithm.critic_warmup", "must be >= 0 (steps)")
    _check(cfg.trainer.staleness >= 0, "trainer.staleness", "must be >= 0")
    _check(cfg.trainer.steps >= 1, "trainer.steps", "must be >= 1")
    _check(cfg.trainer.prompts_per_step >= 1, "trainer.prompts_per_step", "must be >= 1")
    _check(cfg.rollout.n_samples >= 1, "rollout.n_samples", "must be >= 1")
    _check(cfg.rollout.engine in ("vllm", "hf"), "rollout.engine", "must be vllm or hf")
    _check(cfg.rollout.max_turns >= 0, "rollout.max_turns", "must be >= 0")
    _check(not cfg.model.quantization or cfg.rollout.engine == "vllm", "model.quantization", "needs rollout.engine=vllm")
    _check(cfg.rollout.weight_sync in WEIGHT_SYNC_MODES, "rollout.weight_sync", f"must be one of {WEIGHT_SYNC_MODES}")
    if cfg.rollout.weight_sync == "nccl":  # the hardware is checked later, where it runs (zs_ray.weight_sync.nccl)
        r = cfg.resources
        why = nccl_config_problem(r.device, cfg.rollout.tensor_parallel_size, r.gpus_per_policy_worker,
                                  r.gpus_per_rollout_worker)
        _check(why is None, "rollout.weight_sync", f"nccl cannot run with this config: {why}; "
               "use rollout.weight_sync=auto or object_store")
    _check(cfg.search.topk >= 1, "search.topk", "must be >= 1")
    _check(0.0 <= cfg.curriculum.start <= 1.0, "curriculum.start", "must be in [0, 1]")
    _check(0.0 <= cfg.curriculum.end <= 1.0, "curriculum.end", "must be in [0, 1]")
    _check(cfg.curriculum.base > 0, "curriculum.base", "must be > 0")
    _check(cfg.curriculum.coin in ("call", "group"), "curriculum.coin", "must be 'call' or 'group'")
    if cfg.search.backend in SIMULATED_BACKENDS:
        _check(bool(cfg.search.simulator_model) or bool(cfg.search.urls), "search.simulator_model",
               f"search.backend={cfg.search.backend} needs a simulator model (or search.urls of an external server)")
    if cfg.search.backend == "bm25" or (cfg.search.backend == "hybrid" and cfg.search.hybrid_fallback == "bm25"):
        _check(bool(cfg.search.corpus) or bool(cfg.search.index_dir), "search.corpus",
               "BM25 search needs search.corpus (a {id, contents} jsonl) or search.index_dir")
    if cfg.search.backend in ("http", "retriever"):
        _check(len(cfg.search.urls) > 0, "search.urls", f"search.backend={cfg.search.backend} needs at least one URL")
    _check(cfg.search.hybrid_fallback in ("bm25", "retriever"), "search.hybrid_fallback", "must be bm25 or retriever")
    _check(cfg.search.backend != "hybrid" or cfg.search.hybrid_fallback != "retriever" or cfg.search.retriever_urls,
           "search.retriever_urls", "hybrid_fallback=retriever needs retrieval server URLs (urls are the simulator's)")
    _check(cfg.resources.device in ("cpu", "cuda"), "resources.device", "must be cpu or cuda")
    for k in ("policy_workers", "rollout_workers", "simulator_replicas"):
        _check(cfg.resources[k] >= 1, f"resources.{k}", "must be >= 1")
    if cfg.resources.num_cpus is not None:
        need = (cfg.resources.policy_workers * cfg.resources.cpus_per_policy_worker
                + cfg.resources.rollout_workers * cfg.resources.cpus_per_rollout_worker
                + cfg.resources.simulator_replicas * cfg.resources.cpus_per_simulator)
        _check(need <= cfg.resources.num_cpus + 1e-9, "resources.num_cpus", f"the actors ask for {need:g} CPUs but "
               f"resources.num_cpus={cfg.resources.num_cpus:g}; lower the workers or cpus_per_* settings")
    _check(cfg.algorithm.micro_batch_size >= 1, "algorithm.micro_batch_size", "must be >= 1")
    _check(cfg.model.trainable_layers is None or cfg.model.trainable_layers >= 0, "model.trainable_layers",
           "must be >= 0 (the number of top decoder layers that learn) or null (all)")
    _check(cfg.search.max_doc_words is None or cfg.search.max_doc_words >= 1, "search.max_doc_words",
           "must be >= 1 or null (whole passages)")


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def section_defaults(section: type) -> dict:
    """A section's defaults as a plain dict (e.g. SearchConfig), less its required keys: for code handed a
    partial section."""
    return {k: v for k, v in asdict(section()).items() if v != MISSING}


def save_config(cfg: DictConfig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(redacted(cfg))))
