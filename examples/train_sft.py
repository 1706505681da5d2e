"""Stage 1: supervised fine-tuning. ``python examples/train_sft.py --help`` lists the flags; with no
flags it fine-tunes the built-in tiny model on the built-in demonstrations."""

import sys

from minichatgpt.cli import run_training_command

if __name__ == "__main__":
    # a bad flag or data file: one message, exit code 2
    sys.exit(run_training_command("sft", "train_sft.py", sys.argv[1:]))
