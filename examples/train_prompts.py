"""Stage 3: PPO(-ptx) on prompts. ``--help`` lists the flags; with no flags it runs the built-in
three-stage task (as ``minichatgpt pipeline``)."""

import sys

from minichatgpt.recipes.checks import run_command
from minichatgpt.recipes.ppo import main

if __name__ == "__main__":
    sys.exit(run_command("train_prompts.py", main))  # a bad flag or data file: one message, exit code 2
