"""The three stages' scripts under torchrun with 2 CPU processes (gloo), for each CPU strategy."""

import json
import os
import socket
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from minichatgpt.trainer.strategies import STRATEGY_NAMES

REDUCED = ["--eval_prompts", "16",
           "--sft_args", "--max_datasets_size 128 --max_epochs 1 --batch_size 16",
           "--rm_args", "--max_datasets_size 128 --max_epochs 1 --batch_size 16",
           "--ppo_args", "--num_episodes 1 --max_timesteps 2 --update_timesteps 2 --experience_batch_size 8 "
                         "--train_batch_size 8 --max_epochs 1 --max_new_tokens 8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401  (availability check)
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(420)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_pipeline_under_torchrun(strategy, tmp_path):
    assert strategy in STRATEGY_NAMES
    if strategy.startswith("deepspeed") and not deepspeed_available():
        pytest.skip("deepspeed is not installed (pip install -e .[deepspeed])")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "minichatgpt.cli", "pipeline", "--strategy", strategy,
           "--output_dir", str(tmp_path)] + REDUCED
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"sft", "rm", "ppo"}
    assert len({json.dumps(r) for r in rows}) == len(rows)  # only rank 0 logs: no duplicate lines
    AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    AutoModelForCausalLM.from_pretrained(tmp_path / "ppo")
    assert json.loads((tmp_path / "summary.json").read_text())["evaluation"]["ppo"]["response_length"] > 0
