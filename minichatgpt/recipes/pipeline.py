"""The whole recipe in one command: SFT, then the stages ``--algo`` needs (ppo: the reward model from
the SFT model, then PPO with the actor from SFT and the critic from the reward model; dpo: DPO from SFT;
grpo, dr_grpo, rloo, reinforce_pp: the reward model, then the critic-free stage), then an evaluation on
held-out prompts.

Writes ``OUTPUT_DIR/<stage>`` model directories, ``metrics.jsonl`` (every stage), ``config.yaml``,
``summary.json`` and ``<algo stage>.png`` (reward, KL and response length over the RL updates), and
prints a summary table. With no arguments it runs the built-in task (see ``minichatgpt.demo``), where
the hidden ground-truth rule measures whether RLHF improved the policy.
"""

import json
import os
import time
from typing import Any, Dict, List, Optional

import torch

from ..config import resolve
from ..log import get_logger, setup_logging
from . import dpo, grpo, ppo, rm, sft
from .arguments import PipelineParser, pipeline_preset, write_pipeline_config
from .checks import validate_pipeline
from .common import CONFIG_FILE, write_json
from .configs_pipeline import PipelineConfig, pipeline_stages
from .pipeline_report import evaluate, format_summary, plot


def build_parser() -> PipelineParser:
    """``parse_args`` of this parser returns a :class:`PipelineConfig` with every stage's section filled."""
    return PipelineParser()


STAGE_DONE = "stage_result.json"  # written into a stage's directory once the stage has finished
logger = get_logger(__name__)
RUNNERS = {"sft": lambda config: {"metrics": sft.run(config)}, "rm": lambda config: {"metrics": rm.run(config)},
           "ppo": ppo.run, "dpo": lambda config: {"metrics": dpo.run(config)},
           "grpo": lambda config: {"metrics": grpo.run(config)}}


def from_values(given: Dict[str, Any]) -> PipelineConfig:
    """The pipeline's config from given values (top-level fields, ``stage.field`` keys for sections), as
    ``minichatgpt ppo`` without an SFT model builds it."""
    config = resolve(PipelineConfig, given, pipeline_preset)
    object.__setattr__(config, "_section_values", {k: v for k, v in given.items() if "." in k})
    return config


def run_stages(args: PipelineConfig) -> Dict[str, Any]:
    """Each stage in turn, from its section; a finished stage is skipped with ``--resume``."""
    out = args.output_dir
    rank0 = int(os.environ.get("RANK", "0")) == 0
    wall, results, performance = {}, {}, {}
    for stage in pipeline_stages(args.algo, args.reward_fn):
        marker = os.path.join(out, stage, STAGE_DONE)
        if args.resume and os.path.isfile(marker):
            with open(marker) as f:
                done = json.load(f)
            logger.info(f"{stage}: finished earlier ({os.path.join(out, stage)}); skipped")
        else:
            start = time.perf_counter()
            done = RUNNERS[stage](getattr(args, stage))
            done["wall_time_s"] = time.perf_counter() - start
            if rank0:
                write_json(marker, done)
        results[stage], wall[stage] = done["metrics"], done["wall_time_s"]
        performance = done.get("performance", performance)
    return {"stages": results, "wall_time_s": wall, "performance": performance}


def run(args: PipelineConfig) -> dict:
    """Check every stage's section, run the stages, evaluate, write the summary and the plot."""
    setup_logging(args.log_level)
    validate_pipeline(args)  # every stage's flags, before SFT starts
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    metrics_path = os.path.join(out, "metrics.jsonl")
    if rank0:
        if os.path.exists(metrics_path) and not args.resume:
            os.remove(metrics_path)  # a rerun into the same directory starts a fresh log (only rank 0 writes it)
        write_pipeline_config(args, os.path.join(out, CONFIG_FILE))
    summary = run_stages(args)
    stages = pipeline_stages(args.algo, args.reward_fn)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        reward_model_dir = os.path.join(out, "rm") if "rm" in stages else None
        summary["evaluation"] = evaluate(args, out, stages[-1], reward_model_dir)
        write_json(os.path.join(out, "summary.json"), summary)
        plot(metrics_path, os.path.join(out, f"{stages[-1]}.png"), stages[-1])
        logger.info(format_summary(summary))
        logger.info(f"models, metrics.jsonl, summary.json and config.yaml are in {out}")
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv))
