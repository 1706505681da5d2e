#!/usr/bin/env bash
# Stage 2 under torchrun. NPROC processes on this node (default 2); extra flags go to the script.
#   NPROC=4 bash examples/train_rm.sh --pretrain path/to/model --dataset data.json --strategy ddp
set -euo pipefail
torchrun --standalone --nproc_per_node "${NPROC:-2}" "$(dirname "$0")/train_reward_model.py" --strategy "${STRATEGY:-ddp}" "$@"
