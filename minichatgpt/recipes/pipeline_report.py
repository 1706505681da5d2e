"""What the pipeline reports after its stages: SFT against the final policy on held-out prompts, the
reward model on held-out pairs, a summary table and a plot of the RL stage."""

import json
import os
from typing import Optional

import torch

from .. import demo
from ..data import PreferenceCollator, PreferenceDataset
from ..nn import Actor, RewardModel, load_tokenizer
from ..trainer.rm import evaluate_pairs
from .configs import PPO_DEMO, RM_DEMO
from .configs_pipeline import PipelineConfig
from .evaluate import evaluate_policy


def plot(metrics_path: str, png_path: str, stage: str) -> None:
    """Reward, KL and response length over the RL stage's updates (nothing for DPO, which logs none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        rows = [r for r in map(json.loads, f) if r.get("stage") == stage and "reward" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, title in zip(axes, ("reward", "kl", "response_length"),
                              ("reward-model score", "KL to reference (per sequence)", "response length")):
        ax.plot(steps, [r[key] for r in rows], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel(f"{stage.upper()} step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def evaluate(args: PipelineConfig, out: str, final: str, reward_model_dir: Optional[str]) -> dict:
    """SFT vs the final policy (``OUTPUT_DIR/final``) on held-out prompts: the reward model's score (when
    one was trained), KL to SFT, response length and, on the built-in task, the hidden rule; the reward
    model's accuracy on held-out pairs."""
    demo_mode = args.pretrain is None and args.prompt_dataset is None
    tokenizer = load_tokenizer(os.path.join(out, "sft"))
    sft_model, policy = Actor(pretrained=os.path.join(out, "sft")).eval(), Actor(pretrained=os.path.join(out, final)).eval()
    reward_model = RewardModel(pretrained=reward_model_dir).eval() if reward_model_dir else None
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
              final: evaluate_policy(policy, tokenizer, prompts, **common)}
    if pairs is not None and reward_model is not None:
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
    for name in [n for n in ev if isinstance(ev[n], dict)]:
        e = ev[name]
        gt = f"{e['ground_truth']:.3f}" if "ground_truth" in e else "n/a"
        score = f"{e['reward_model_score']:.3f}" if "reward_model_score" in e else "n/a"
        lines.append(f"| {name} | {gt} | {score} | {e['kl_to_reference']:.3f} | {e['response_length']:.1f} |")
    if "rm_heldout_accuracy" in ev:
        lines.append(f"\nreward model held-out accuracy: {ev['rm_heldout_accuracy']:.3f}")
    lines.append("stage wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["wall_time_s"].items()))
    return "\n".join(lines)
