#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md: influence overhead on a Qwen2.5-1.5B-shaped model and the
# local engine against TRL, on one GPU. Usage: bash bench/gpu_suite.sh OUT_DIR
set -uo pipefail
out="${1:-bench-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

run() { echo "+ $*" >&2; "$@" --json | tee -a "$out/influence.jsonl"; }
common=(--device cuda --model qwen2.5-1.5b --dtype bf16 --responses 16 --group-size 16 --prompt-len 128 --response-len 2048 --micro 4 --reps 5)
run python3 bench/influence_overhead.py "${common[@]}"                                   # default knobs
run python3 bench/influence_overhead.py "${common[@]}" --hessian-source token
run python3 bench/influence_overhead.py "${common[@]}" --filter '.' --max-modules 0        # all 196 linears

echo "+ local_step" >&2
python3 bench/local_step.py --device cuda --json --steps 12 --blocks 2 | tee -a "$out/local_step.jsonl"
python3 bench/local_step.py --device cuda --dtype bf16 --json --steps 12 --blocks 2 | tee -a "$out/local_step.jsonl"
