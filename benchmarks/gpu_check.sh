#!/usr/bin/env bash
# The GPU check of minichatgpt, for one CUDA machine with its own preinstalled stack (torch, transformers,
# peft, accelerate; no network, no DeepSpeed/bitsandbytes/ColossalAI) in at most 8 minutes:
#
#   benchmarks/gpu_check.sh [--out DIR] [--target DIR] [--dry_run]
#
#   --out DIR     where every result goes as JSON lines (default: $OUT when set, else ./gpu_check_out)
#   --target DIR  install the package into DIR (pip --target) instead of an editable install
#   --dry_run     print the plan (each step, its time limit and command) and exit
#
# Steps, each under `timeout` (seconds): install with `pip install --no-deps` (the requirement floors admit
# the machine's versions), the tests marked `gpu`, PPO on the `s` preset in bf16 with and without LoRA,
# SFT and RM benchmarks on `s` in bf16, rollout generation against Hugging Face `generate`, and the decode
# step replayed from a CUDA graph (`generate(decode="cuda_graph")`) against the dynamic loop and HF. Each step
# appends {"step", "rc", "seconds", "command"} to OUT/gpu_check.jsonl; the benchmarks append their own records
# to OUT/<benchmark>.jsonl and their output to OUT/<step>.log. A failing step does not stop the others.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT:-$PWD/gpu_check_out}"
TARGET=""
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --target) TARGET="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python}"
if [ -n "$TARGET" ]; then
  INSTALL="$PY -m pip install --no-deps --no-build-isolation --target $TARGET $ROOT"
  PYPATH="$TARGET"
else
  INSTALL="$PY -m pip install --no-deps --no-build-isolation -e $ROOT"
  PYPATH="$ROOT"
fi
B="$ROOT/benchmarks"
PPO="--model s --strategy naive --precision bf16 --num_episodes 1 --max_timesteps 2 --update_timesteps 2 \
--max_epochs 1 --experience_batch_size 16 --train_batch_size 8 --max_input_len 256 --max_new_tokens 128"
SUP="--model s --strategy naive --precision bf16 --batch_size 8 --seq_len 512 --steps 8 --warmup_steps 2"

# name|seconds|command (total 475 s, within the 8 minutes with start-up to spare)
STEPS=(
  "install|40|$INSTALL"
  "pytest_gpu|100|$PY -m pytest -m gpu -q -p no:cacheprovider --junitxml=$OUT_DIR/pytest_gpu.xml $ROOT/tests"
  "ppo_bf16|80|$PY $B/benchmark_gpt_dummy.py $PPO --results $OUT_DIR/gpt_dummy.jsonl"
  "ppo_bf16_lora|80|$PY $B/benchmark_gpt_dummy.py $PPO --lora_rank 8 --results $OUT_DIR/gpt_dummy.jsonl"
  "sft_bf16|45|$PY $B/benchmark_sft.py $SUP --results $OUT_DIR/sft.jsonl"
  "rm_bf16|45|$PY $B/benchmark_rm.py $SUP --results $OUT_DIR/rm.jsonl"
  "generate|50|$PY $B/compare_generate.py --device cuda --data demo --n_layer 12 --n_embd 768 --n_head 12 \
--batch_size 16 --seq_len 128 --max_new_tokens 128 --steps 2 --repeats 2 --threads 4 --results $OUT_DIR/generate.jsonl"
  "generate_graph|35|$PY $B/compare_generate.py --device cuda --data demo --n_layer 12 --n_embd 768 --n_head 12 \
--batch_size 16 --seq_len 128 --max_new_tokens 64 --modes greedy,eos --decode dynamic,cuda_graph --steps 1 --repeats 2 \
--threads 4 --results $OUT_DIR/generate_graph.jsonl"
)

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check plan (results under $OUT_DIR):"
  total=0
  for entry in "${STEPS[@]}"; do
    IFS='|' read -r name seconds command <<< "$entry"
    total=$((total + seconds))
    printf '  %-14s <= %3ss  %s\n' "$name" "$seconds" "$command"
  done
  echo "total time limit: ${total}s"
  exit 0
fi

mkdir -p "$OUT_DIR"
export PYTHONPATH="$PYPATH${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=0
for entry in "${STEPS[@]}"; do
  IFS='|' read -r name seconds command <<< "$entry"
  start=$(date +%s%N)
  (cd "$ROOT" && timeout "$seconds" bash -c "$command") > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  "$PY" -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "rc": int(sys.argv[2]), "seconds": int(sys.argv[3]) / 1000, "command": sys.argv[4]}))' \
    "$name" "$rc" "$elapsed_ms" "$command" >> "$OUT_DIR/gpu_check.jsonl"
  echo "$name: rc $rc (${elapsed_ms} ms)"
  [ "$rc" = 0 ] || failed=$((failed + 1))
done
"$PY" -c 'import json, torch; print(json.dumps({"step": "environment", "torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))' \
  >> "$OUT_DIR/gpu_check.jsonl" 2>/dev/null
echo "results in $OUT_DIR ($failed step(s) failed)"
exit $((failed > 0))
