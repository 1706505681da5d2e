"""bf16 against fp32 for SFT, reward-model training and PPO on the same model and data, in one run.

    python benchmarks/bench_precision.py --model xs --repeats 2

Runs ``benchmark_sft.py``, ``benchmark_rm.py`` and ``benchmark_gpt_dummy.py`` (naive strategy, same preset,
seed and random data) in fresh processes, alternating fp32 and bf16 ``--repeats`` times, so that a
burst of load from other processes on a shared machine hits both precisions alike, and each process's
peak RSS is its own. Reports per stage and precision: the final loss (SFT, RM) or mean reward (PPO),
the fastest repeat's time per training step, peak memory, the training phase's fraction of the
matmul rate of its own dtype, PPO rollout tokens/s; then the fp32/bf16 ratios, and whether the final
losses agree within ``--loss_rtol`` (bf16 keeps 8 mantissa bits: per-step relative error ~2^-8, which
a few steps of training compound a little). Appends one JSON line to ``--results``.
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
    """The fastest repeat's timings (least disturbed by other load); losses are the same in every repeat."""
    fastest = min(rows, key=lambda r: r["train_step_s"])
    return dict(fastest, peak_rss_mib=max(r["peak_rss_mib"] for r in rows))


def compare(stage: str, fp32: dict, bf16: dict, loss_rtol: float) -> dict:
    ratios = {"train_step_speedup": fp32["train_step_s"] / bf16["train_step_s"],
              "peak_rss_ratio": bf16["peak_rss_mib"] / fp32["peak_rss_mib"]}
    if stage == "ppo":
        ratios["rollout_tokens_per_s_ratio"] = bf16["rollout_tokens_per_s"] / fp32["rollout_tokens_per_s"]
        ratios["overall_speedup"] = fp32["overall_s"] / bf16["overall_s"]
        # PPO samples its rollouts: bf16 probabilities draw other tokens, so rewards are compared in absolute
        # terms against the scale of a randomly initialized reward model's scores.
        ratios["final_close"] = abs(fp32["final"] - bf16["final"]) <= loss_rtol * max(1.0, abs(fp32["final"]))
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
    parser.add_argument("--loss_rtol", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--results", default=os.path.join(HERE, "results", "precision.jsonl"))
    args = parser.parse_args(argv)
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
                                           args.loss_rtol)
        print(f"{stage}: {json.dumps(summary['ratios'][stage])}", flush=True)
    print(format_table(summary))
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
