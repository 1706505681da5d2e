"""The ``minichatgpt`` command: ``pipeline``, ``sft``, ``rm``, ``ppo``, ``chat``, ``serve``."""

import sys
from typing import List, Optional

COMMANDS = {
    "pipeline": "SFT -> reward model -> PPO -> evaluation, in one run",
    "sft": "stage 1: supervised fine-tuning (examples/train_sft.py)",
    "rm": "stage 2: reward-model training (examples/train_reward_model.py)",
    "ppo": "stage 3: PPO(-ptx) on prompts (examples/train_prompts.py)",
    "dpo": "DPO / IPO / SimPO on preference pairs, no reward model (examples/train_dpo.py)",
    "grpo": "critic-free RL: GRPO / Dr. GRPO / RLOO / REINFORCE++ with --reward_fn (examples/train_grpo.py)",
    "eval": "RM accuracy, policy win rate vs a baseline by a judge, perplexity",
}
SERVING = {"chat": "multi-turn chat in the terminal", "serve": "OpenAI-compatible HTTP server with a web page"}


def usage() -> str:
    lines = ["usage: minichatgpt COMMAND [options]   (minichatgpt COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10}{doc}" for name, doc in COMMANDS.items()]
    lines += [f"  {name:<10}{doc}" for name, doc in SERVING.items()]
    return "\n".join(lines)


def run_training_command(command: str, prog: str, argv: Optional[List[str]] = None) -> int:
    """Run ``pipeline``/``sft``/``rm``/``ppo`` (also for the example scripts, whose ``prog`` is their file
    name); a bad flag or data file (UsageError, DataError) is one message and exit code 2, as argparse's
    own errors."""
    from .log import setup_logging

    setup_logging()  # before transformers imports the optional libraries it finds installed
    from .recipes.checks import run_command
    from .recipes.commands import COMMANDS as RECIPES

    return run_command(prog, RECIPES[command], argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        return run_training_command(command, f"minichatgpt {command}", rest)
    if command in SERVING:
        from .recipes.checks import run_command
        from .serving.cli import run

        # A bad flag or a missing extra (fastapi for serve, torchao for --quant) is one line and exit code 2.
        return run_command(f"minichatgpt {command}", lambda argv: run(command, argv), rest)
    print(f"minichatgpt: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
