"""Download the public models and data sets the ZeroSearch seed names, from the Hugging Face hub.

    python -m zs_ray.tools.hub list
    python -m zs_ray.tools.hub download searchsimulation-14b models/SearchSimulation_14B
    python -m zs_ray.tools.hub download sunhaonlp/ZeroSearch_dataset ZeroSearch_dataset

A thin wrapper around `huggingface_hub.snapshot_download`: interrupted downloads resume from the
partial files on the next call. On a machine without hub access (HF_HUB_OFFLINE=1, which zs-ray's
CPU default sets, or no route to the hub) it fails within a few seconds with HubUnavailable,
instead of retrying. Gated repos (meta-llama) need `HF_TOKEN` or `huggingface-cli login` and an
accepted licence on the model page.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import sys
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0

# Model weights in HF format only: skip the original/consolidated checkpoints some repos carry too.
_MODEL_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py", "*.md"]
_MODEL_IGNORE = ["original/*", "*.pth", "*.bin.index.json"]


@dataclass(frozen=True)
class Asset:
    name: str
    repo_id: str
    repo_type: str = "model"  # model | dataset
    role: str = ""
    gated: bool = False

    @property
    def allow_patterns(self) -> Optional[list[str]]:
        return _MODEL_PATTERNS if self.repo_type == "model" else None

    @property
    def ignore_patterns(self) -> Optional[list[str]]:
        return _MODEL_IGNORE if self.repo_type == "model" else None


ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("zerosearch-dataset", "sunhaonlp/ZeroSearch_dataset", "dataset",
          "training/eval parquet (train.parquet, test.parquet) in the Search-R1 format"),
    Asset("searchsimulation-3b", "sunhaonlp/SearchSimulation_3B", role="fine-tuned simulator (simulate_sft)"),
    Asset("searchsimulation-7b", "sunhaonlp/SearchSimulation_7B", role="fine-tuned simulator (simulate_sft)"),
    Asset("searchsimulation-14b", "sunhaonlp/SearchSimulation_14B", role="fine-tuned simulator (simulate_sft)"),
    Asset("qwen2.5-14b-instruct", "Qwen/Qwen2.5-14B-Instruct", role="prompted simulator (simulate_prompt)"),
    Asset("qwen2.5-14b-instruct-awq", "Qwen/Qwen2.5-14B-Instruct-AWQ",
          role="prompted simulator, AWQ 4-bit (search.quantization=awq)"),
    Asset("qwen2.5-3b", "Qwen/Qwen2.5-3B", role="policy (base)"),
    Asset("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", role="policy (instruct)"),
    Asset("qwen2.5-7b", "Qwen/Qwen2.5-7B", role="policy (base)"),
    Asset("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", role="policy (instruct)"),
    Asset("llama-3.2-3b", "meta-llama/Llama-3.2-3B", role="policy (base)", gated=True),
    Asset("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", role="policy (instruct)", gated=True),
]}


class HubUnavailable(RuntimeError):
    """The hub cannot be reached from this machine (offline mode or no connection)."""


class UnknownAsset(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def resolve(name: str) -> Optional[Asset]:
    """An asset by table name, hub repo id or repo basename (case-insensitive); None if unknown."""
    key = name.strip().rstrip("/").lower()
    for a in ASSETS.values():
        if key in (a.name, a.repo_id.lower(), a.repo_id.split("/")[-1].lower()):
            return a
    return None


def lookup(name: str) -> Asset:
    """Like resolve, but an owner/name repo id not in the table is accepted as a model repo."""
    a = resolve(name)
    if a is not None:
        return a
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return Asset(name.lower(), name, "model")
    raise UnknownAsset(f"unknown asset '{name}'; known: {', '.join(ASSETS)} (or any owner/name hub repo id)")


def _truthy(v: Optional[str]) -> bool:
    return (v or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def check_access(timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise HubUnavailable at once when downloads cannot work: offline mode or no TCP route to the hub."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            raise HubUnavailable(
                f"the Hugging Face hub is disabled on this machine ({var}={os.environ[var]}; zs-ray's CPU "
                f"default sets HF_HUB_OFFLINE=1). On a machine with internet access run "
                f"`HF_HUB_OFFLINE=0 python -m zs_ray.tools.hub download ...`, or copy the files here and point "
                f"model.policy_path / search.simulator_model / data.* at them.")
    url = urlparse(_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)

    def probe():
        with socket.create_connection((host, port), timeout=timeout_s):
            pass

    # getaddrinfo has no timeout of its own: run the probe in a thread and stop waiting after timeout_s.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(probe).result(timeout=timeout_s + 0.5)
    except concurrent.futures.TimeoutError:
        raise HubUnavailable(f"cannot reach the Hugging Face hub at {host}:{port} within {timeout_s:g} s "
                             f"(no internet access from this machine?)") from None
    except OSError as e:
        raise HubUnavailable(f"cannot reach the Hugging Face hub at {host}:{port}: {e} "
                             f"(no internet access from this machine? set HF_ENDPOINT for a mirror)") from None
    finally:
        pool.shutdown(wait=False)


def download(asset: str, out_dir: str, revision: Optional[str] = None, token: Optional[str] = None,
             timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Download `asset` (a table name, repo id or basename) into `out_dir`; returns the folder.

    Re-running after an interruption resumes; files already complete are skipped.
    """
    a = lookup(asset)
    check_access(timeout_s)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise HubUnavailable(f"huggingface_hub is not installed: {e}") from None
    os.makedirs(out_dir, exist_ok=True)
    try:
        return snapshot_download(
            a.repo_id, repo_type=a.repo_type, revision=revision, local_dir=out_dir,
            allow_patterns=a.allow_patterns, ignore_patterns=a.ignore_patterns,
            token=token, etag_timeout=timeout_s,
        )
    except Exception as e:
        name = type(e).__name__
        hint = ""
        if a.gated and ("401" in str(e) or "403" in str(e) or "Gated" in name):
            hint = (f" {a.repo_id} is gated: accept its licence on the model page and set HF_TOKEN "
                    f"(or `huggingface-cli login`).")
        if "Offline" in name or "Connect" in name or "Timeout" in name:
            raise HubUnavailable(f"downloading {a.repo_id} failed: {name}: {e}") from None
        raise RuntimeError(f"downloading {a.repo_id} ({a.repo_type}) failed: {name}: {e}.{hint}") from None


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zs_ray.tools.hub", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the known assets")
    d = sub.add_parser("download", help="download one asset into a folder (resumes)")
    d.add_argument("asset", help="table name, hub repo id or repo basename")
    d.add_argument("out_dir")
    d.add_argument("--revision")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for a in ASSETS.values():
            gated = "  [gated]" if a.gated else ""
            print(f"{a.name:26s} {a.repo_type:8s} {a.repo_id:34s} {a.role}{gated}")
        return 0
    try:
        path = download(args.asset, args.out_dir, revision=args.revision)
    except (HubUnavailable, UnknownAsset, RuntimeError) as e:
        print(f"zs_ray.tools.hub: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
