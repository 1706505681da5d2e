"""Per-algorithm figures on the built-in task: SFT, then DPO, GRPO, Dr. GRPO, RLOO and REINFORCE++ from it,
each scored on held-out prompts by the hidden ground-truth rule, with KL to SFT, wall time and peak memory.

    python benchmarks/beyond_ppo_demo.py --seeds 42 43 44 --out outputs/beyond_ppo

Each stage runs in its own process on one CPU thread; its peak RSS comes from ``/usr/bin/time``.
The RL stages use the hidden rule as their reward function; PPO is the pipeline's (not rerun here).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

GRPO = ["--reward_fn", "minichatgpt.demo:hidden_rule_reward", "--experience_batch_size", "16",
        "--num_samples_per_prompt", "4", "--train_batch_size", "32", "--max_epochs", "2", "--max_new_tokens", "14",
        "--max_input_len", "32", "--actor_lr", "1e-4", "--kl_coef", "0.02", "--max_datasets_size", "1024"]
STAGES = {"dpo": ["dpo", "--lr", "1e-4", "--beta", "0.1", "--batch_size", "32", "--max_len", "64", "--max_epochs", "1",
                  "--log_interval", "20"],
          **{algo: ["grpo", "--algo", algo, *GRPO] for algo in ("grpo", "dr_grpo", "rloo", "reinforce_pp")}}


def run_stage(argv, env):
    """Wall seconds and peak RSS (MiB) of one ``minichatgpt`` process."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, sys.executable, "-m", "minichatgpt.cli", *argv],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        return wall, int(rss.read().split()[-1]) / 1024


def evaluate(sft: str, policy: str, seed: int) -> dict:
    from minichatgpt import demo
    from minichatgpt.nn import Actor, load_tokenizer
    from minichatgpt.recipes.evaluate import evaluate_policy

    prompts = [[{"role": "user", "content": r["instruction"]}]
               for r in demo.prompt_records(256, seed=seed + 3, split="eval")]
    return evaluate_policy(Actor(pretrained=policy).eval(), load_tokenizer(sft), prompts,
                           reference=Actor(pretrained=sft).eval(), score_fn=demo.ground_truth_score,
                           max_new_tokens=14, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--out", default="outputs/beyond_ppo")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    for seed in args.seeds:
        base = os.path.join(args.out, f"seed{seed}")
        sft = os.path.join(base, "sft")
        wall, peak = run_stage(["sft", "--save_path", sft, "--seed", str(seed)], env)
        rows.append({"seed": seed, "algo": "sft", "wall_s": wall, "peak_mib": peak, **evaluate(sft, sft, seed)})
        for name, argv in STAGES.items():
            out = os.path.join(base, name)
            wall, peak = run_stage(argv + ["--pretrain", sft, "--save_path", out, "--seed", str(seed)], env)
            rows.append({"seed": seed, "algo": name, "wall_s": wall, "peak_mib": peak, **evaluate(sft, out, seed)})
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
