#!/usr/bin/env bash
# Stage 3 (PPO) under torchrun. NPROC processes on this node (default 2); extra flags go to the script.
#   NPROC=4 bash examples/train_prompts.sh --pretrain path/to/model --rm_pretrain path/to/rm --prompt_path prompts.jsonl --strategy ddp
set -euo pipefail
torchrun --standalone --nproc_per_node "${NPROC:-2}" "$(dirname "$0")/train_prompts.py" --strategy "${STRATEGY:-ddp}" "$@"
