"""The whole recipe in one command: SFT, then the reward model (from the SFT model), then PPO (actor
from the SFT model, critic from the reward model), then an evaluation on held-out prompts.

Writes ``OUTPUT_DIR/{sft,rm,ppo}`` model directories, ``metrics.jsonl`` (every stage),
``summary.json`` and ``ppo.png`` (reward, KL and response length over PPO steps), and prints a
summary table. With no arguments it runs the built-in task (see ``minichatgpt.demo``), where the
hidden ground-truth rule measures whether RLHF improved the policy.
"""

import argparse
import json
import os
import shlex
import time
from typing import Dict, List, Optional

import torch

from .. import demo
from ..data import PreferenceCollator, PreferenceDataset
from ..nn import Actor, RewardModel, load_tokenizer
from ..trainer.rm import evaluate_pairs
from ..trainer.strategies import STRATEGY_NAMES
from . import ppo, rm, sft
from .checks import validate_pipeline
from .common import write_json
from .model_flags import add_model_arguments
from .evaluate import evaluate_policy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/pipeline")
    parser.add_argument("--pretrain", default=None, help="starting model (default: the built-in tiny model)")
    parser.add_argument("--sft_dataset", default=None)
    parser.add_argument("--rm_dataset", default=None)
    parser.add_argument("--prompt_dataset", default=None)
    parser.add_argument("--strategy", default="naive", choices=STRATEGY_NAMES)
    parser.add_argument("--lora_rank", type=int, default=0)
    add_model_arguments(parser)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval_prompts", type=int, default=256, help="held-out prompts for the final evaluation")
    parser.add_argument("--skip_invalid_rows", action="store_true",
                        help="every stage leaves out invalid data rows (counted and reported) instead of stopping")
    parser.add_argument("--save_interval", type=int, default=0,
                        help="every stage writes a resumable checkpoint every N steps (see each stage's --help)")
    parser.add_argument("--save_total_limit", type=int, default=None, help="keep the newest N checkpoints per stage")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted pipeline in OUTPUT_DIR: finished stages are skipped and the "
                             "interrupted one resumes from its newest checkpoint")
    parser.add_argument("--sft_args", default="", help="extra flags for the SFT stage, e.g. \"--max_epochs 2\"")
    parser.add_argument("--rm_args", default="", help="extra flags for the reward-model stage")
    parser.add_argument("--ppo_args", default="", help="extra flags for the PPO stage")
    return parser


def _flags(options: dict) -> List[str]:
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def _stage_argv(args, stage_defaults: dict, demo_mode: bool, extra: str, **options) -> List[str]:
    options = {k: v for k, v in options.items() if v is not None}
    defaults = _flags(stage_defaults) if demo_mode else []
    skip = [f"--{flag}" for flag in ("skip_invalid_rows", "trust_remote_code") if getattr(args, flag, False)]
    return defaults + _flags(options) + skip + shlex.split(extra)


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


def evaluate(args, out: str) -> dict:
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
                  seed=args.seed, max_new_tokens=ppo.DEMO_DEFAULTS["max_new_tokens"] if demo_mode else 64)
    result = {"sft": evaluate_policy(sft_model, tokenizer, prompts, **common),
              "ppo": evaluate_policy(ppo_model, tokenizer, prompts, **common)}
    if pairs is not None:
        max_len = rm.DEMO_DEFAULTS["max_len"] if demo_mode else 512
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


STAGES = ("sft", "rm", "ppo")
STAGE_DONE = "stage_result.json"  # written into a stage's directory once the stage has finished


def stage_argvs(args: argparse.Namespace) -> Dict[str, List[str]]:
    """Each stage's command line, as the pipeline runs it (also what ``checks`` validates up front)."""
    out = args.output_dir
    base = dict(strategy=args.strategy, seed=args.seed, metrics_path=os.path.join(out, "metrics.jsonl"),
                save_interval=args.save_interval or None, save_total_limit=args.save_total_limit,
                precision=args.precision, save_dtype=args.save_dtype, attn_implementation=args.attn_implementation,
                deepspeed_config=args.deepspeed_config)
    stages = {
        "sft": (sft, args.sft_dataset, dict(pretrain=args.pretrain, dataset=args.sft_dataset,
                                            lora_rank=args.lora_rank or None)),
        "rm": (rm, args.rm_dataset, dict(pretrain=os.path.join(out, "sft"), dataset=args.rm_dataset)),
        "ppo": (ppo, args.prompt_dataset, dict(pretrain=os.path.join(out, "sft"), rm_pretrain=os.path.join(out, "rm"),
                                               prompt_path=args.prompt_dataset, lora_rank=args.lora_rank or None)),
    }
    return {stage: _stage_argv(args, module.DEMO_DEFAULTS, args.pretrain is None and data is None,
                               getattr(args, f"{stage}_args"), save_path=os.path.join(out, stage), **options, **base)
            for stage, (module, data, options) in stages.items()}


def _run_stage(stage: str, argv: List[str]) -> dict:
    if stage == "ppo":
        return ppo.run(ppo.build_parser().parse_args(argv))
    return {"metrics": {"sft": sft, "rm": rm}[stage].main(argv)}


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    validate_pipeline(args)  # every stage's flags, before SFT starts
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    metrics_path = os.path.join(out, "metrics.jsonl")
    if rank0 and os.path.exists(metrics_path) and not args.resume:
        os.remove(metrics_path)  # a rerun into the same directory starts a fresh log (only rank 0 writes it)
    wall, results, performance = {}, {}, {}
    for stage, stage_argv in stage_argvs(args).items():
        marker = os.path.join(out, stage, STAGE_DONE)
        if args.resume and os.path.isfile(marker):
            with open(marker) as f:
                done = json.load(f)
            if rank0:
                print(f"{stage}: finished earlier ({os.path.join(out, stage)}); skipped")
        else:
            start = time.perf_counter()
            done = _run_stage(stage, stage_argv + (["--resume", "auto"] if args.resume else []))
            done["wall_time_s"] = time.perf_counter() - start
            if rank0:
                write_json(marker, done)
        results[stage], wall[stage] = done["metrics"], done["wall_time_s"]
        performance = done.get("performance", performance)

    summary = {"stages": results, "wall_time_s": wall, "performance": performance}
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        summary["evaluation"] = evaluate(args, out)
        write_json(os.path.join(out, "summary.json"), summary)
        _plot(metrics_path, os.path.join(out, "ppo.png"))
        print(format_summary(summary))
        print(f"models, metrics.jsonl, summary.json and ppo.png are in {out}")
    return summary
