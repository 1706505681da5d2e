"""Stage 3: PPO(-ptx) on prompts. ``--help`` lists the flags; with no flags it runs the built-in
three-stage task (as ``minichatgpt pipeline``)."""

import sys

from minichatgpt.cli import run_training_command

if __name__ == "__main__":
    # a bad flag or data file: one message, exit code 2
    sys.exit(run_training_command("ppo", "train_prompts.py", sys.argv[1:]))
