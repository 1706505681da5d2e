"""The ``minichatgpt`` command: ``pipeline``, ``sft``, ``rm``, ``ppo``, ``chat``, ``serve``."""

import argparse
import sys
from typing import List, Optional

COMMANDS = {
    "pipeline": ("minichatgpt.recipes.pipeline", "SFT -> reward model -> PPO -> evaluation, in one run"),
    "sft": ("minichatgpt.recipes.sft", "stage 1: supervised fine-tuning (examples/train_sft.py)"),
    "rm": ("minichatgpt.recipes.rm", "stage 2: reward-model training (examples/train_reward_model.py)"),
    "ppo": ("minichatgpt.recipes.ppo", "stage 3: PPO(-ptx) on prompts (examples/train_prompts.py)"),
    "eval": ("minichatgpt.recipes.eval", "RM accuracy, policy win rate vs a baseline by a judge, perplexity"),
}
SERVING = {"chat": "multi-turn chat in the terminal", "serve": "OpenAI-compatible HTTP server with a web page"}


def usage() -> str:
    lines = ["usage: minichatgpt COMMAND [options]   (minichatgpt COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10}{doc}" for name, (_, doc) in COMMANDS.items()]
    lines += [f"  {name:<10}{doc}" for name, doc in SERVING.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        import importlib

        from .recipes.checks import run_command

        # A bad flag or data file (UsageError, DataError) is one message and exit code 2, as argparse's own errors.
        return run_command(f"minichatgpt {command}", importlib.import_module(COMMANDS[command][0]).main, rest)
    if command in SERVING:
        from .recipes.checks import run_command
        from .serving.cli import register

        parser = argparse.ArgumentParser(prog="minichatgpt")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args([command] + rest)
        # A missing extra (fastapi for serve, torchao for --quant) is one line and exit code 2.
        return run_command(f"minichatgpt {command}", lambda _: args.func(args))
    print(f"minichatgpt: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
