"""bf16 against fp32 for SFT, reward-model training and PPO on the same model and data, in one run.

    python benchmarks/bench_precision.py --model xs --repeats 2

Runs ``benchmark_sft.py``, ``benchmark_rm.py`` and ``benchmark_gpt_dummy.py`` (naive strategy, same preset,
seed and random data) in fresh processes, alternating fp32 and bf16 ``--repeats`` times, so that a
burst of load from other processes on a shared machine hits both precisions alike, and each process's
peak RSS is its own. Reports per stage and precision: the final loss (SFT, RM) or mean reward (PPO),
each timing's best repeat (time per training step, PPO update and rollout tokens/s), peak memory, the
training phase's fraction of the matmul rate of its own dtype; then the fp32/bf16 ratios, and whether the final
losses agree within ``--loss_rtol`` (bf16 keeps 8 mantissa bits: per-step relative error ~2^-8, which
a few steps of training compound a little) and the PPO mean rewards within ``--reward_atol`` (sampled
rollouts diverge between precisions). Appends one JSON line to ``--results``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
PRECISIONS = ("fp32", "bf16")


def stage_commands(args: argparse.Namespace) -> Dict[str, List[str]]:
    common = ["--model", args.model, "--strategy", "naive", "--seed", str(args.seed)]
    supervised = ["--seq_len", str(args.seq_len), "--steps", str(args.steps), "--warmup_steps", "1"]
    return {
        "sft": ["benchmark_sft.py", *common, *supervised, "--batch_size", str(args.batch_size)],
        "rm": ["benchmark_rm.py", *common, *supervised, "--batch_size", str(max(1, args.batch_size // 2))],
        "ppo": ["benchmark_gpt_dummy.py", *common, "--num_episodes", "1", "--max_timesteps", str(args.ppo_timesteps),
                "--update_timesteps", str(args.ppo_timesteps), "--max_epochs", "1", "--experience_batch_size",
                str(args.batch_size), "--train_batch_size", str(args.batch_size), "--max_input_len",
                str(args.ppo_prompt_len), "--max_new_tokens", str(args.ppo_new_tokens)],
    }


def run_one(command: List[str], precision: str) -> dict:
    """One benchmark process; returns its JSON record."""
    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "result.jsonl")
        cmd = [sys.executable, os.path.join(HERE, command[0]), *command[1:], "--precision", precision,
               "--results", results]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        with open(results) as f:
            return json.loads(f.readlines()[-1])


def summarize(stage: str, record: dict, steps: int) -> dict:
    results = record["results"]
    training = results["phases"]["training"]
    row = {"train_step_s": training["time_s"] / steps, "peak_rss_mib": results["peak_memory"]["max_bytes"] / 2 ** 20,
           "training_matmul_fraction": results["training_matmul_fraction"],
           "matmul_tflops": results["matmul_tflops_per_rank"], "load_average_1m": record["load_average_1m_end"]}
    metrics = record.get("metrics") or {}
    if stage == "ppo":
        row.update(final=metrics.get("reward"), kl=metrics.get("kl"),
                   rollout_tokens_per_s=results["phases"]["generation"]["tokens_per_s"],
                   overall_s=results["phases"]["overall"]["time_s"])
    else:
        row["final"] = metrics.get("loss")
    return row


def best(rows: List[dict]) -> dict:
    """Each timing's best repeat (the least disturbed by other load on a shared machine), the highest peak
    memory; losses and rewards are the same in every repeat (same seed)."""
    merged = dict(rows[0], peak_rss_mib=max(r["peak_rss_mib"] for r in rows))
    for key in ("train_step_s", "overall_s"):
        if key in merged:
            merged[key] = min(r[key] for r in rows)
    for key in ("rollout_tokens_per_s", "training_matmul_fraction", "matmul_tflops"):
        if key in merged:
            merged[key] = max(r[key] for r in rows)
    return merged


def compare(stage: str, fp32: dict, bf16: dict, loss_rtol: float, reward_atol: float) -> dict:
    ratios = {"train_step_speedup": fp32["train_step_s"] / bf16["train_step_s"],
              "peak_rss_ratio": bf16["peak_rss_mib"] / fp32["peak_rss_mib"]}
    if stage == "ppo":
        ratios["rollout_tokens_per_s_ratio"] = bf16["rollout_tokens_per_s"] / fp32["rollout_tokens_per_s"]
        ratios["overall_speedup"] = fp32["overall_s"] / bf16["overall_s"]
        # PPO samples its rollouts: bf16 probabilities draw other tokens from the first step on, so the mean
        # reward differs by sampling noise; it is compared with an absolute tolerance instead.
        ratios["final_close"] = abs(fp32["final"] - bf16["final"]) <= reward_atol
    else:
        ratios["final_close"] = abs(fp32["final"] - bf16["final"]) <= loss_rtol * abs(fp32["final"])
    return ratios


def format_table(summary: dict) -> str:
    lines = ["| stage | precision | final loss / reward | step (s) | peak RSS (MiB) | training / matmul rate | "
             "rollout tokens/s |", "|---|---|---|---|---|---|---|"]
    for stage, rows in summary["stages"].items():
        for precision in PRECISIONS:
            r = rows[precision]
            tokens = f"{r['rollout_tokens_per_s']:.0f}" if "rollout_tokens_per_s" in r else ""
            lines.append(f"| {stage} | {precision} | {r['final']:.4f} | {r['train_step_s']:.2f} | "
                         f"{r['peak_rss_mib']:.0f} | {100 * r['training_matmul_fraction']:.0f}% | {tokens} |")
    lines.append("")
    for stage, ratios in summary["ratios"].items():
        lines.append(f"{stage}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in ratios.items()))
    return "\n".join(lines)


def compare_bf16_methods(preset: str, batch_size: int, seq_len: int, repeats: int) -> Dict[str, float]:
    """Best forward+backward seconds of one SFT batch for the two bf16 methods against float32, alternating in
    this process: ``torch.autocast`` over float32 weights, and bf16 weights (the naive/DDP choice)."""
    import copy
    import time

    import torch

    sys.path.insert(0, HERE)
    from common import gpt_config

    from minichatgpt.functional import lm_loss
    from minichatgpt.nn import LM
    from minichatgpt.trainer.strategies.precision import autocast_module

    torch.manual_seed(0)
    base = LM(config=gpt_config(preset))
    models = {"fp32": base, "autocast": autocast_module(copy.deepcopy(base), torch.bfloat16, "cpu"),
              "bf16_weights": copy.deepcopy(base).to(torch.bfloat16)}
    ids = torch.randint(1, base.model.config.vocab_size, (batch_size, seq_len))
    best = {name: float("inf") for name in models}
    for repeat in range(repeats + 1):  # the first round warms up
        for name, model in models.items():
            start = time.perf_counter()
            lm_loss(model(ids, torch.ones_like(ids)), ids).backward()
            model.zero_grad(set_to_none=True)
            if repeat:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="xs", help="size preset of benchmarks/common.py")
    parser.add_argument("--stages", default="sft,rm,ppo")
    parser.add_argument("--repeats", type=int, default=2, help="fp32/bf16 alternations per stage")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed SFT/RM optimizer steps")
    parser.add_argument("--ppo_timesteps", type=int, default=2, help="rollout batches before the one PPO update")
    parser.add_argument("--ppo_prompt_len", type=int, default=64)
    parser.add_argument("--ppo_new_tokens", type=int, default=64)
    parser.add_argument("--loss_rtol", type=float, default=0.02, help="SFT/RM final losses agree within this")
    parser.add_argument("--reward_atol", type=float, default=0.25,
                        help="PPO mean rewards agree within this (sampling noise of a few random rollouts)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--results", default=os.path.join(HERE, "results", "precision.jsonl"))
    parser.add_argument("--bf16_methods", action="store_true",
                        help="instead: time autocast against bf16 weights (forward+backward, one process)")
    args = parser.parse_args(argv)
    if args.bf16_methods:
        timings = compare_bf16_methods(args.model, args.batch_size, args.seq_len, args.repeats)
        print(", ".join(f"{name} {seconds:.2f} s ({timings['fp32'] / seconds:.2f}x fp32)"
                        for name, seconds in timings.items()))
        return timings
    commands = stage_commands(args)
    summary = {"config": vars(args), "stages": {}, "ratios": {}, "records": {}}
    for stage in args.stages.split(","):
        rows = {p: [] for p in PRECISIONS}
        for _ in range(args.repeats):
            for precision in PRECISIONS:
                record = run_one(commands[stage], precision)
                steps = args.steps if stage != "ppo" else 1
                rows[precision].append(summarize(stage, record, steps))
                summary["records"].setdefault(stage, []).append({"precision": precision, "device": record["device_name"],
                                                                 "row": rows[precision][-1]})
        summary["stages"][stage] = {p: best(rows[p]) for p in PRECISIONS}
        summary["ratios"][stage] = compare(stage, summary["stages"][stage]["fp32"], summary["stages"][stage]["bf16"],
                                           args.loss_rtol, args.reward_atol)
        print(f"{stage}: {json.dumps(summary['ratios'][stage])}", flush=True)
    print(format_table(summary))
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
