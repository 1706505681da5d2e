"""Critic-free RL (GRPO, Dr. GRPO, RLOO, REINFORCE++) on prompts. ``--help`` lists the flags; start from the
SFT model with ``--pretrain``; with no flags it runs GRPO on the built-in prompts, the hidden rule as reward."""

import sys

from minichatgpt.cli import run_training_command

if __name__ == "__main__":
    # a bad flag or data file: one message, exit code 2
    sys.exit(run_training_command("grpo", "train_grpo.py", sys.argv[1:]))
