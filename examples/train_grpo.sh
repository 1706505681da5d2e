#!/usr/bin/env bash
# GRPO under torchrun. NPROC processes on this node (default 2); extra flags go to the script.
#   NPROC=4 bash examples/train_grpo.sh --pretrain outputs/sft --prompt_path prompts.jsonl \
#       --reward_fn my_rewards.py:score --strategy ddp
set -euo pipefail
torchrun --standalone --nproc_per_node "${NPROC:-2}" "$(dirname "$0")/train_grpo.py" --strategy "${STRATEGY:-ddp}" "$@"
