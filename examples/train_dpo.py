"""DPO-family training (DPO, IPO, SimPO) on preference pairs. ``--help`` lists the flags; start from the SFT
model with ``--pretrain``; with no flags it trains the built-in tiny model on the built-in pairs."""

import sys

from minichatgpt.cli import run_training_command

if __name__ == "__main__":
    # a bad flag or data file: one message, exit code 2
    sys.exit(run_training_command("dpo", "train_dpo.py", sys.argv[1:]))
