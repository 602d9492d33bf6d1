#!/usr/bin/env bash
# Issue 15, run A: the verl path on one GPU with archer's hf rollout (no vLLM), after
# bench/device/install.sh put verl and its dependencies into /tmp/archer-site.
#
#   bash bench/device/verl_gpu.sh [tiny|half|all]      (on the GPU machine, from the repo copy)
#
# tiny: quickstart-verl on the GPU (FSDP2), 2 steps + checkpoint, then --resume to step 3.
# half: a Qwen2.5-0.5B-shaped Qwen2 (hidden 896, 24 layers, 14/2 heads, MLP 4864; the character
#       vocabulary) built in code, bf16, gradient checkpointing, influence at default knobs,
#       3 steps: FSDP2 with influence, FSDP2 without (the overhead), FSDP1 with influence.
# vtiny: quickstart-verl with rollout.backend=vllm (after stage_vllm.py's install), 3 steps.
# vllm: the half shape with rollout.backend=vllm (FSDP2, influence), 3 steps.
# tiny1r: quickstart-verl with FSDP1, 2 steps + checkpoint, then --resume to step 3.
# half2r: the half shape (FSDP2, influence), 2 steps + checkpoint, then --resume to step 3.
# half1r: the same with FSDP1 (verl's default strategy).
# arpo-vllm: ARPO through verl's agent loop with vLLM rollouts (archer's top-k entropy server,
#       rollout_vllm.py): arpo-verl-smoke's tiny model, tool task and warm-up, widened for a GPU
#       (16 prompts x 8 trajectories from 2 roots), python + search tools, branching; 2 steps, then
#       the agent metrics (branches, tool calls, ΔH at the decisions, segment entropies) and
#       `summarize.py --check-agent` (exit 3 without a tool call, a branch or non-zero entropies).
# arpo-hf: the same run with archer's hf rollout replica (no vLLM staging) and influence on.
# aepo-vllm: the same with aepo-verl-smoke (AEPO's lock-step counter, dynamic rollouts, aepo loss).
# Everything lands in $OUT (or ./device-out): each run's log, metrics.jsonl, trace info and the
# step-time split printed by bench/device/summarize.py.
set -uo pipefail
what="${1:-all}"
out="${OUT:-$PWD/device-out}"
mkdir -p "$out"
export PYTHONPATH="/tmp/archer-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# vLLM's own site (bench/device/stage_vllm.py) goes first: its fastapi (<0.137) wins over verl's.
[ -d /tmp/archer-vllm-site ] && export PYTHONPATH="/tmp/archer-vllm-site:$PYTHONPATH"
export VLLM_USE_FLASHINFER_SAMPLER=0  # FlashInfer is not staged (stage_vllm.py)
export PATH="/tmp/archer-site/bin:$PATH"
export RAY_AUTH_MODE=disabled
export ARCHER_DEBUG=1
cache="${CACHE:-/tmp/archer-cache}"
gpu1=(verl.trainer.n_gpus_per_node=1 "trainer.cache_dir=$cache")

run() {  # name, args...
  local name="$1"; shift
  local t0; t0=$(date +%s)
  echo "== $name: archer $*" | tee -a "$out/runs.txt"
  python3 -m archer "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$out/runs.txt"
  ray stop --force >/dev/null 2>&1 || true
  return $rc
}

copy_run() {  # name, run dir
  mkdir -p "$out/$1"
  cp "$2/metrics.jsonl" "$2/config.yaml" "$2/verl_config.yaml" "$out/$1/" 2>/dev/null
  python3 -m archer trace info "$2" >"$out/$1/trace-info.txt" 2>&1
  python3 bench/device/summarize.py "$2" >"$out/$1/summary.txt" 2>&1
  cat "$out/$1/summary.txt"
}

half=(
  model.tiny.hidden_size=896 model.tiny.num_layers=24 model.tiny.num_heads=14 model.tiny.num_kv_heads=2
  model.tiny.intermediate_size=4864 model.tiny.max_position_embeddings=512 model.tiny.tie_word_embeddings=true
  model.dtype=bf16 model.gradient_checkpointing=true
  warmup.steps=150 warmup.lr=3e-4 warmup.batch_size=64
  actor.optim.lr=1e-5 data.train_batch_size=16 actor.ppo_mini_batch_size=16 rollout.n=8
  # influence at archer's defaults (quickstart-influence narrows them for the tiny model)
  "influence.module_name_filter=mlp\\.down_proj\$" influence.max_modules=4 influence.projection_dim_factor=32
  influence.storage_dtype=bf16 influence.profile_timing=true
  trainer.total_steps=3 trainer.save_every=3 trainer.val_every=3
)

if [[ "$what" == tiny || "$what" == all ]]; then
  r="${RUNS:-/tmp/archer-runs}/tiny"
  run tiny-a train --preset quickstart-verl --out "$r" trainer.total_steps=2 trainer.save_every=2 "${gpu1[@]}" &&
    run tiny-b train --resume --out "$r" trainer.total_steps=3 &&
    copy_run tiny "$r"
fi
runs="${RUNS:-/tmp/archer-runs}"
if [[ "$what" == half || "$what" == half2 || "$what" == all ]]; then
  r="$runs/half-fsdp2"
  run half-fsdp2 train --preset quickstart-verl --out "$r" "${half[@]}" "${gpu1[@]}" && copy_run half-fsdp2 "$r"
fi
if [[ "$what" == half || "$what" == half2n || "$what" == all ]]; then
  r="$runs/half-fsdp2-noinfl"
  run half-fsdp2-noinfl train --preset quickstart-verl --out "$r" "${half[@]}" "${gpu1[@]}" influence.enable=false &&
    copy_run half-fsdp2-noinfl "$r"
fi
if [[ "$what" == half || "$what" == half1 || "$what" == all ]]; then
  r="$runs/half-fsdp1"
  run half-fsdp1 train --preset quickstart-verl --out "$r" "${half[@]}" "${gpu1[@]}" \
    verl.actor_rollout_ref.actor.strategy=fsdp verl.actor_rollout_ref.ref.strategy=fsdp && copy_run half-fsdp1 "$r"
fi
vllm=(rollout.backend=vllm verl.actor_rollout_ref.rollout.enforce_eager=true
  verl.actor_rollout_ref.rollout.gpu_memory_utilization=0.3 verl.actor_rollout_ref.rollout.tensor_model_parallel_size=1)
if [[ "$what" == vtiny ]]; then
  r="$runs/vtiny"
  run vtiny train --preset quickstart-verl --out "$r" trainer.total_steps=3 trainer.save_every=3 \
    "${vllm[@]}" "${gpu1[@]}" && copy_run vtiny "$r"
fi
if [[ "$what" == vllm ]]; then
  r="$runs/half-vllm"
  run half-vllm train --preset quickstart-verl --out "$r" "${half[@]}" "${vllm[@]}" "${gpu1[@]}" &&
    copy_run half-vllm "$r"
fi
if [[ "$what" == tiny1r ]]; then  # FSDP1: 2 steps + checkpoint, then --resume to step 3
  r="$runs/tiny-fsdp1"
  fsdp1=(verl.actor_rollout_ref.actor.strategy=fsdp verl.actor_rollout_ref.ref.strategy=fsdp)
  run tiny1-a train --preset quickstart-verl --out "$r" trainer.total_steps=2 trainer.save_every=2 \
    "${fsdp1[@]}" "${gpu1[@]}" &&
    run tiny1-b train --resume --out "$r" trainer.total_steps=3 && copy_run tiny-fsdp1 "$r"
fi
if [[ "$what" == half1r ]]; then  # the half shape with FSDP1: 2 steps + checkpoint, then --resume to step 3
  r="$runs/half-fsdp1-resume"
  run half1-resume-a train --preset quickstart-verl --out "$r" "${half[@]}" "${gpu1[@]}" \
    verl.actor_rollout_ref.actor.strategy=fsdp verl.actor_rollout_ref.ref.strategy=fsdp \
    trainer.total_steps=2 trainer.save_every=2 &&
    run half1-resume-b train --resume --out "$r" trainer.total_steps=3 && copy_run half-fsdp1-resume "$r"
fi
if [[ "$what" == half2r ]]; then
  r="$runs/half-resume"
  run half-resume-a train --preset quickstart-verl --out "$r" "${half[@]}" "${gpu1[@]}" \
    trainer.total_steps=2 trainer.save_every=2 &&
    run half-resume-b train --resume --out "$r" trainer.total_steps=3 && copy_run half-resume "$r"
fi
# agent runs: the python tool isolates model-written code with bubblewrap where it holds here;
# otherwise (a container without user namespaces) it runs unisolated, said in runs.txt: the
# lent machine is disposable and the code is the tiny model's arithmetic.
agent_gpu=(data.train_batch_size=16 rollout.n=8 agent.initial_rollouts=2 actor.ppo_mini_batch_size=16
  warmup.steps=200 trainer.total_steps=2 trainer.save_every=0 trainer.val_every=0)
sandbox() {
  if python3 -c "from archer.core.tools.python_sandbox import PythonSandbox; PythonSandbox().probe()" \
    >"$out/sandbox-probe.txt" 2>&1; then
    echo "agent.tools.python.isolation=bwrap"
  else
    echo "== python tool: bubblewrap does not hold here ($(tail -1 "$out/sandbox-probe.txt")); isolation=none" \
      >>"$out/runs.txt"
    echo "agent.tools.python.isolation=none"
  fi
}
agent_run() {  # name, [--preset P], extra args...
  local name="$1"; shift
  local preset=arpo-verl-smoke
  if [[ "${1:-}" == --preset ]]; then preset="$2"; shift 2; fi
  local backend=("${vllm[@]}")
  if [[ "${1:-}" == --hf ]]; then backend=(); shift; fi
  local r="$runs/$name"
  run "$name" train --preset "$preset" --out "$r" "${agent_gpu[@]}" "${backend[@]}" "${gpu1[@]}" \
    "$(sandbox)" "$@" && copy_run "$name" "$r" &&
    python3 bench/device/summarize.py "$r" --check-agent | tail -20 | tee "$out/$name/agent-check.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: agent check rc=$rc" | tee -a "$out/runs.txt"
}
if [[ "$what" == arpo-vllm ]]; then
  agent_run arpo-vllm
fi
if [[ "$what" == arpo-hf ]]; then  # archer's hf replica (exact entropy), influence of agent groups
  agent_run arpo-hf --hf influence.enable=true
fi
if [[ "$what" == aepo-vllm ]]; then
  agent_run aepo-vllm --preset aepo-verl-smoke
fi
nvidia-smi --query-gpu=name,memory.total --format=csv >"$out/gpu.txt" 2>&1
cat "$out/runs.txt"
