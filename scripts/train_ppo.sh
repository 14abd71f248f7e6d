#!/usr/bin/env bash
# ZeroSearch seed-compatible launcher: PPO on zs-ray. The seed's command works as written, e.g.
#   bash scripts/train_ppo.sh NUM_GPUS_PER_NODE 4 MODEL_PATH Llama-3.2-3B DATA_PATH ZeroSearch_dataset \
#     TOTAL_STEPS 203 IP localhost SEARCH_MODE simulate_prompt SIMULATION_LLM Qwen2.5-14B-Instruct \
#     START_THRESHOLD 0.25 END_THRESHOLD 0.5
# Keys: NUM_GPUS_PER_NODE MODEL_PATH DATA_PATH TOTAL_STEPS IP SEARCH_MODE SIMULATION_LLM
#       START_THRESHOLD END_THRESHOLD (all optional; defaults from configs/recipes/seed_ppo.yaml).
# Extra: --dry-run (print the zs-ray command), --recipe FILE, --skip-preflight, and zs-ray key=value
# overrides after the pairs. The mapping is documented in zs_ray/tools/seed_compat.py.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/python.sh  # PY: $PYTHON, else ./.venv/bin/python, else python3 on PATH
exec "$PY" -m zs_ray.tools.seed_compat ppo "$@"
