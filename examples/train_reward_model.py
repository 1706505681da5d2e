"""Stage 2: reward-model training on preference pairs. ``--help`` lists the flags; with no flags it
trains the built-in tiny reward model on the built-in pairs."""

import sys

from minichatgpt.recipes.checks import run_command
from minichatgpt.recipes.rm import main

if __name__ == "__main__":
    sys.exit(run_command("train_reward_model.py", main))  # a bad flag or data file: one message, exit code 2
