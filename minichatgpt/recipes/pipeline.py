"""The whole recipe in one command: SFT, then the reward model (from the SFT model), then PPO (actor
from the SFT model, critic from the reward model), then an evaluation on held-out prompts.

Writes ``OUTPUT_DIR/{sft,rm,ppo}`` model directories, ``metrics.jsonl`` (every stage),
``summary.json`` and ``ppo.png`` (reward, KL and response length over PPO steps), and prints a
summary table. With no arguments it runs the built-in task (see ``minichatgpt.demo``), where the
hidden ground-truth rule measures whether RLHF improved the policy.
"""

import json
import os
import time
from typing import Any, Dict, List, Optional

import torch

from .. import demo
from ..data import PreferenceCollator, PreferenceDataset
from ..nn import Actor, RewardModel, load_tokenizer
from ..config import resolve
from ..log import get_logger, setup_logging
from ..trainer.rm import evaluate_pairs
from . import ppo, rm, sft
from .arguments import PipelineParser, pipeline_preset, write_pipeline_config
from .checks import validate_pipeline
from .common import CONFIG_FILE, write_json
from .configs import PPO_DEMO, RM_DEMO, STAGES, PipelineConfig
from .evaluate import evaluate_policy


def build_parser() -> PipelineParser:
    """``parse_args`` of this parser returns a :class:`PipelineConfig` with every stage's section filled."""
    return PipelineParser()


def _plot(metrics_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        rows = [r for r in map(json.loads, f) if r.get("stage") == "ppo" and "reward" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("reward", "kl", "response_length"),
                              ("reward-model score", "KL to reference (per sequence)", "response length")):
        ax.plot(steps, [r[key] for r in rows], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def evaluate(args: PipelineConfig, out: str) -> dict:
    """SFT vs PPO policy on held-out prompts, and the reward model on held-out pairs."""
    demo_mode = args.pretrain is None and args.prompt_dataset is None
    tokenizer = load_tokenizer(os.path.join(out, "sft"))
    sft_model, ppo_model = Actor(pretrained=os.path.join(out, "sft")).eval(), Actor(pretrained=os.path.join(out, "ppo")).eval()
    reward_model = RewardModel(pretrained=os.path.join(out, "rm")).eval()
    if demo_mode:
        prompts = [[{"role": "user", "content": r["instruction"]}]
                   for r in demo.prompt_records(args.eval_prompts, seed=args.seed + 3, split="eval")]
        pairs = demo.preference_records(512, seed=args.seed + 4, split="eval")
    else:
        from ..data import PromptDataset

        dataset = PromptDataset(args.prompt_dataset, tokenizer, max_datasets_size=args.eval_prompts,
                                skip_invalid=args.skip_invalid_rows)
        prompts, pairs = dataset.messages, args.rm_dataset
    common = dict(reference=sft_model, reward_model=reward_model, score_fn=demo.ground_truth_score if demo_mode else None,
                  seed=args.seed, max_new_tokens=PPO_DEMO["max_new_tokens"] if demo_mode else 64)
    result = {"sft": evaluate_policy(sft_model, tokenizer, prompts, **common),
              "ppo": evaluate_policy(ppo_model, tokenizer, prompts, **common)}
    if pairs is not None:
        max_len = RM_DEMO["max_len"] if demo_mode else 512
        pair_set = PreferenceDataset(pairs, tokenizer, max_len=max_len, max_datasets_size=512,
                                     skip_invalid=args.skip_invalid_rows)
        loader = torch.utils.data.DataLoader(pair_set, batch_size=64,
                                             collate_fn=PreferenceCollator(tokenizer.pad_token_id))
        sums = evaluate_pairs(reward_model, loader, "cpu")
        result["rm_heldout_accuracy"] = sums["correct"] / max(sums["count"], 1)
    return result


def format_summary(summary: dict) -> str:
    ev = summary["evaluation"]
    lines = ["| policy | ground truth | reward-model score | KL to SFT | response length |", "|---|---|---|---|---|"]
    for name in ("sft", "ppo"):
        e = ev[name]
        gt = f"{e['ground_truth']:.3f}" if "ground_truth" in e else "n/a"
        lines.append(f"| {name} | {gt} | {e['reward_model_score']:.3f} | {e['kl_to_reference']:.3f} | "
                     f"{e['response_length']:.1f} |")
    if "rm_heldout_accuracy" in ev:
        lines.append(f"\nreward model held-out accuracy: {ev['rm_heldout_accuracy']:.3f}")
    lines.append("stage wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["wall_time_s"].items()))
    return "\n".join(lines)


STAGE_DONE = "stage_result.json"  # written into a stage's directory once the stage has finished
logger = get_logger(__name__)
RUNNERS = {"sft": lambda config: {"metrics": sft.run(config)}, "rm": lambda config: {"metrics": rm.run(config)},
           "ppo": ppo.run}


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
    for stage in STAGES:
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
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        summary["evaluation"] = evaluate(args, out)
        write_json(os.path.join(out, "summary.json"), summary)
        _plot(metrics_path, os.path.join(out, "ppo.png"))
        logger.info(format_summary(summary))
        logger.info(f"models, metrics.jsonl, summary.json, config.yaml and ppo.png are in {out}")
    return summary


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv))
