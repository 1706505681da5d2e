#!/usr/bin/env bash
# The RLHF recipe on a real chat model, measured by `minichatgpt eval` (issue 13).
#
#   SmolLM2-135M-Instruct (GGUF, ../shared/models)
#     -> SFT with LoRA on Alpaca (../shared/data/alpaca_en_demo.json)
#     -> proxy reward model from the SFT model, on one part of the preference pairs
#     -> PPO from the SFT model against the proxy reward model
#     -> DPO from the SFT model on the proxy part's pairs (no reward model; reference = adapters off)
#     -> GRPO from the SFT model against the proxy reward model (4 samples per prompt, no critic)
#   gold reward model, from the base model, on a different and larger part of the pairs (never seen by PPO)
#   then: proxy and gold RM accuracy on held-out pairs; the win rate of each policy (PPO, DPO, GRPO) against SFT
#   by the gold RM on held-out prompts, with KL to SFT and response lengths; perplexity on C4 text.
#
# The pairs (instruction_data_with_preference.json) are cut into disjoint parts by prompt with
# `minichatgpt eval --split` (tested in tests/evaluation/test_split.py): proxy, gold, heldout.
#
# usage: benchmarks/real_model_recipe.sh [--smoke] [--resume] [--until STAGE] [--out DIR]
#   --smoke   seconds-size stages (a handful of records and steps): checks that the recipe runs end to end
#   --resume  keep the stages OUT/stages.tsv already records (same sizes) and run the others
#   --until   stop after this stage (split, sft, rm_proxy, rm_gold, ppo, dpo, grpo, eval)
#   --out     output directory (default outputs/real_model_recipe, or outputs/real_model_recipe_smoke)
# Environment: SHARED (default ../shared, relative to the repository root), PYTHON (default python),
#   PRECISION (default bf16: SFT and the reward models compute in bf16 with float32 masters, about 2x faster here),
#   POLICY_PRECISION (default fp32: PPO, DPO and GRPO start from the LoRA SFT model and score with the LoRA
#   proxy RM, whose merged deltas bf16 would round partly away; it costs 11-51% more time per policy stage here),
#   POLICY_LR (learning rate of the PPO, DPO and GRPO policies' LoRA adapters), KL_COEF (PPO's and GRPO's KL
#   coefficient), DPO_BETA.
# Writes OUT/stages.tsv (wall time and peak resident memory of each stage) and OUT/eval/{results.json,
# report.md, report.png}. The full size took 32 minutes on 2 quiet CPU cores (README, "Evaluating models").
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
RESUME=0
OUT=""
UNTIL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --resume) RESUME=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --until) UNTIL="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "real_model_recipe.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$UNTIL" in
  ""|split|sft|rm_proxy|rm_gold|ppo|dpo|grpo|eval) ;;
  *) echo "real_model_recipe.sh: --until $UNTIL is not a stage (split, sft, rm_proxy, rm_gold, ppo, dpo, grpo, eval)" >&2; exit 2 ;;
esac

SHARED=${SHARED:-../shared}
PYTHON=${PYTHON:-python}
PRECISION=${PRECISION:-bf16}
POLICY_PRECISION=${POLICY_PRECISION:-fp32}
POLICY_LR=${POLICY_LR:-5e-4}  # PPO's and GRPO's actor, DPO's policy (LoRA adapters)
KL_COEF=${KL_COEF:-0.05}      # PPO's and GRPO's KL-to-SFT coefficient
DPO_BETA=${DPO_BETA:-0.1}
MODEL="$SHARED/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
SFT_DATA="$SHARED/data/alpaca_en_demo.json"
PAIRS="$SHARED/data/instruction_data_with_preference.json"
TEXT="$SHARED/data/c4_demo.jsonl"
for f in "$MODEL" "$SFT_DATA" "$PAIRS" "$TEXT"; do
  [ -f "$f" ] || { echo "real_model_recipe.sh: $f is missing (set SHARED to the shared/ folder)" >&2; exit 2; }
done

if [ "$SMOKE" = 1 ]; then
  OUT=${OUT:-outputs/real_model_recipe_smoke}
  PARTS="proxy=8,gold=8,heldout=4"
  SFT_SIZE=8; MAX_LEN=64; LORA=4; LOG=1
  PPO_SIZE="--num_episodes 1 --max_timesteps 1 --update_timesteps 1 --experience_batch_size 2 --train_batch_size 2 --max_epochs 1"
  GOLD_SIZE=8
  DPO_SIZE=8
  GRPO_SIZE="--num_episodes 1 --max_datasets_size 2 --experience_batch_size 2 --train_batch_size 4 --num_samples_per_prompt 2"
  NEW_TOKENS=8; EVAL_PROMPTS=4; DOCS=2; BATCH=4
else
  OUT=${OUT:-outputs/real_model_recipe}
  PARTS="proxy=300,gold=600,heldout=200"
  SFT_SIZE=320; MAX_LEN=192; LORA=16; LOG=5
  GOLD_SIZE=400
  PPO_SIZE="--num_episodes 8 --max_timesteps 4 --update_timesteps 4 --experience_batch_size 8 --train_batch_size 8 --max_epochs 2"
  DPO_SIZE=300
  GRPO_SIZE="--num_episodes 1 --max_datasets_size 128 --experience_batch_size 4 --train_batch_size 8 --num_samples_per_prompt 4"
  NEW_TOKENS=48; EVAL_PROMPTS=200; DOCS=10; BATCH=8
fi
mkdir -p "$OUT"
STAGES="$OUT/stages.tsv"
[ "$RESUME" = 1 ] && [ -f "$STAGES" ] || printf "stage\twall_s\tpeak_rss_mb\n" > "$STAGES"

# stage NAME COMMAND...: run one stage, append its wall time and peak resident memory to stages.tsv.
# Without GNU time (/usr/bin/time), the wall time only.
stage() {
  local name="$1"; shift
  if [ "$RESUME" = 1 ] && cut -f1 "$STAGES" | grep -qx "$name"; then
    echo "=== $name: done in an earlier run (stages.tsv), kept"
  else
    run_stage "$name" "$@"
  fi
  if [ "$name" = "$UNTIL" ]; then
    echo "=== stopped after $name (--until); --resume runs the rest"; exit 0
  fi
}

run_stage() {
  local name="$1"; shift
  echo "=== $name: $*"
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%e %M" -o "$OUT/.time" "$@"
    read -r wall rss_kb < "$OUT/.time"
    printf "%s\t%s\t%d\n" "$name" "$wall" "$((rss_kb / 1024))" >> "$STAGES"
  else
    local start=$SECONDS
    "$@"
    printf "%s\t%s\tn/a\n" "$name" "$((SECONDS - start))" >> "$STAGES"
  fi
}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
MCG=("$PYTHON" -m minichatgpt.cli)
P=(--precision "$PRECISION")
PP=(--precision "$POLICY_PRECISION")

# 0. disjoint parts of the pairs, by prompt
stage split "${MCG[@]}" eval --split "$PAIRS" --split_parts "$PARTS" --seed 0 --output_dir "$OUT/data"

# 1. SFT (LoRA) from the instruct model
stage sft "${MCG[@]}" sft "${P[@]}" --pretrain "$MODEL" --dataset "$SFT_DATA" --max_datasets_size "$SFT_SIZE" \
  --lora_rank "$LORA" --max_len "$MAX_LEN" --batch_size 8 --lr 2e-4 --max_epochs 1 --eval_ratio 0.05 \
  --log_interval "$LOG" --save_path "$OUT/sft"

# 2. proxy reward model, from the SFT model, on the proxy part
stage rm_proxy "${MCG[@]}" rm "${P[@]}" --pretrain "$OUT/sft" --dataset "$OUT/data/proxy.jsonl" --lora_rank "$LORA" \
  --max_len "$MAX_LEN" --batch_size 8 --lr 2e-4 --max_epochs 1 --eval_ratio 0.1 --log_interval "$LOG" \
  --save_path "$OUT/rm_proxy"

# 3. gold reward model, from the base model, on the larger gold part (the policy is never trained on it)
stage rm_gold "${MCG[@]}" rm "${P[@]}" --pretrain "$MODEL" --dataset "$OUT/data/gold.jsonl" \
  --max_datasets_size "$GOLD_SIZE" --lora_rank "$LORA" \
  --max_len "$MAX_LEN" --batch_size 8 --lr 2e-4 --max_epochs 1 --eval_ratio 0.1 --log_interval "$LOG" \
  --save_path "$OUT/rm_gold"

# 4. PPO from the SFT model against the proxy reward model, on the proxy part's prompts
# shellcheck disable=SC2086
stage ppo "${MCG[@]}" ppo "${PP[@]}" --pretrain "$OUT/sft" --rm_pretrain "$OUT/rm_proxy" --prompt_path "$OUT/data/proxy.jsonl" \
  --lora_rank "$LORA" $PPO_SIZE --max_input_len 96 --max_new_tokens "$NEW_TOKENS" --actor_lr "$POLICY_LR" \
  --critic_lr 1e-4 --kl_coef "$KL_COEF" --ptx_coef 0 --log_interval 1 --save_path "$OUT/ppo"

# 5. DPO from the same SFT model on the proxy part's pairs (the reference is the SFT model: adapters off)
stage dpo "${MCG[@]}" dpo "${PP[@]}" --pretrain "$OUT/sft" --dataset "$OUT/data/proxy.jsonl" \
  --max_datasets_size "$DPO_SIZE" --lora_rank "$LORA" --max_len "$MAX_LEN" --batch_size 4 --accumulation_steps 2 \
  --lr "$POLICY_LR" --beta "$DPO_BETA" --loss_type sigmoid --max_epochs 1 --eval_ratio 0.05 --log_interval "$LOG" \
  --save_path "$OUT/dpo"

# 6. GRPO from the same SFT model against the proxy reward model, on the proxy part's prompts (no critic)
# shellcheck disable=SC2086
stage grpo "${MCG[@]}" grpo "${PP[@]}" --pretrain "$OUT/sft" --rm_pretrain "$OUT/rm_proxy" \
  --prompt_path "$OUT/data/proxy.jsonl" --algo grpo --lora_rank "$LORA" $GRPO_SIZE --max_input_len 96 \
  --max_new_tokens "$NEW_TOKENS" --actor_lr "$POLICY_LR" --kl_coef "$KL_COEF" --log_interval 1 --save_path "$OUT/grpo"
POLICIES=("ppo=$OUT/ppo" "dpo=$OUT/dpo" "grpo=$OUT/grpo")

# 7. evaluation: RM accuracy on held-out pairs; each policy against SFT by the gold RM; perplexity.
# In float32: every saved model holds its LoRA adapters merged, and bf16 weights would round much of those small
# deltas away (measured: the proxy RM's held-out accuracy 0.720 -> 0.675 and mean margin 0.223 -> 0.115 in bf16).
stage eval "${MCG[@]}" eval --output_dir "$OUT/eval" \
  --reward_model "proxy=$OUT/rm_proxy" "gold=$OUT/rm_gold" --pairs "$OUT/data/heldout.jsonl" \
  --policy "${POLICIES[@]}" --baseline "sft=$OUT/sft" --prompts "$OUT/data/heldout.jsonl" \
  --max_prompts "$EVAL_PROMPTS" --judge_rm "gold=$OUT/rm_gold" --max_new_tokens "$NEW_TOKENS" \
  --max_input_len 96 --max_len "$MAX_LEN" --batch_size "$BATCH" --seed 0 --precision fp32 \
  --text "$TEXT" --max_documents "$DOCS"

rm -f "$OUT/.time"
echo
column -t -s $'\t' "$STAGES" 2>/dev/null || cat "$STAGES"
echo "report: $OUT/eval/report.md, $OUT/eval/report.png; stage times: $STAGES"
