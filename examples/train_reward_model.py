"""Stage 2: reward-model training on preference pairs. ``--help`` lists the flags; with no flags it
trains the built-in tiny reward model on the built-in pairs."""

import sys

from minichatgpt.cli import run_training_command

if __name__ == "__main__":
    # a bad flag or data file: one message, exit code 2
    sys.exit(run_training_command("rm", "train_reward_model.py", sys.argv[1:]))
