#!/usr/bin/env bash
# DPO under torchrun. NPROC processes on this node (default 2); extra flags go to the script.
#   NPROC=4 bash examples/train_dpo.sh --pretrain outputs/sft --dataset pairs.jsonl --strategy ddp
set -euo pipefail
torchrun --standalone --nproc_per_node "${NPROC:-2}" "$(dirname "$0")/train_dpo.py" --strategy "${STRATEGY:-ddp}" "$@"
