"""The training commands as ``minichatgpt <command>`` and the example scripts run them.

Each takes the command line (``None``: ``sys.argv``) and returns what its recipe returns. ``ppo`` is
the one with a twist: without an SFT model (``--pretrain``) it runs the pipeline, which trains the
built-in SFT and reward models first, with the PPO flags given here as its PPO section.
"""

from typing import List, Optional

from . import dpo as dpo_recipe, eval as eval_recipe, grpo as grpo_recipe, pipeline, ppo as ppo_recipe
from . import rm as rm_recipe, sft as sft_recipe
from .arguments import pipeline_values_for_ppo


def sft(argv: Optional[List[str]] = None) -> dict:
    return sft_recipe.main(argv)


def rm(argv: Optional[List[str]] = None) -> dict:
    return rm_recipe.main(argv)


def ppo(argv: Optional[List[str]] = None) -> dict:
    parser = ppo_recipe.build_parser()
    config = parser.parse_args(argv)
    if config.pretrain is None:
        values = pipeline_values_for_ppo(parser.given)
        values.setdefault("output_dir", "outputs/pipeline")
        return pipeline.run(pipeline.from_values(values))
    return ppo_recipe.run(config)


def dpo(argv: Optional[List[str]] = None) -> dict:
    return dpo_recipe.main(argv)


def grpo(argv: Optional[List[str]] = None) -> dict:
    return grpo_recipe.main(argv)


def run_pipeline(argv: Optional[List[str]] = None) -> dict:
    return pipeline.main(argv)


def evaluate(argv: Optional[List[str]] = None) -> dict:
    return eval_recipe.main(argv)


COMMANDS = {"pipeline": run_pipeline, "sft": sft, "rm": rm, "ppo": ppo, "dpo": dpo, "grpo": grpo, "eval": evaluate}
