"""Stage 1: supervised fine-tuning. ``python examples/train_sft.py --help`` lists the flags; with no
flags it fine-tunes the built-in tiny model on the built-in demonstrations."""

import sys

from minichatgpt.recipes.checks import run_command
from minichatgpt.recipes.sft import main

if __name__ == "__main__":
    sys.exit(run_command("train_sft.py", main))  # a bad flag or data file: one message, exit code 2
