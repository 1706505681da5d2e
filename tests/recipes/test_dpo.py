"""``minichatgpt dpo``: a run from a saved model, its checks, and exact resume after a crash."""

import os
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from minichatgpt.cli import main
from minichatgpt.recipes.checks import UsageError, check_command
from minichatgpt.recipes.configs_rl import DPOConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_resume import assert_identical, run_worker  # noqa: E402


def dpo_args(model_dir, save_path, *extra):
    # 40 pairs, 8 per batch, 2 epochs, accumulation 2: 3 optimizer steps per epoch
    return ["dpo", "--pretrain", model_dir, "--save_path", str(save_path), "--log_interval", "1", "--save_interval",
            "1", "--seed", "7", "--max_datasets_size", "40", "--batch_size", "8", "--max_epochs", "2", "--eval_ratio",
            "0", "--lr", "1e-3", "--accumulation_steps", "2", "--max_len", "48", *extra]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_dpo_cli_trains_and_writes_model_config_metrics(tiny_model_dirs, tmp_path):
    assert main(dpo_args(tiny_model_dirs["gpt2"], tmp_path, "--beta", "0.5", "--sft_coef", "0.1")) == 0
    before = load_file(os.path.join(tiny_model_dirs["gpt2"], "model.safetensors"))
    after = load_file(str(tmp_path / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after if k in before)
    config = (tmp_path / "config.yaml").read_text()
    assert "beta: 0.5" in config and "loss_type: sigmoid" in config
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert '"reward_margin"' in metrics and '"sft_loss"' in metrics


@pytest.mark.parametrize("family,extra", [("llama", ["--lora_rank", "4", "--loss_type", "ipo"]),
                                          ("opt", ["--loss_type", "simpo", "--beta", "2", "--simpo_gamma", "1"])])
def test_dpo_cli_with_lora_ipo_and_simpo(family, extra, tiny_model_dirs, tmp_path):
    assert main(dpo_args(tiny_model_dirs[family], tmp_path, *extra)) == 0
    assert (tmp_path / "model.safetensors").exists()
    assert ("adapter" in os.listdir(tmp_path)) == ("--lora_rank" in extra)


def test_dpo_checks(tiny_model_dirs):
    with pytest.raises(UsageError, match="--reference adapters_off needs LoRA"):
        check_command("dpo", ["--pretrain", tiny_model_dirs["gpt2"], "--reference", "adapters_off"])
    with pytest.raises(UsageError, match="only simpo is reference-free"):
        check_command("dpo", ["--pretrain", tiny_model_dirs["gpt2"], "--reference", "none"])
    with pytest.raises(UsageError, match="--label_smoothing must be"):
        check_command("dpo", ["--label_smoothing", "0.5"])
    config = check_command("dpo", ["--pretrain", tiny_model_dirs["gpt2"], "--loss_type", "simpo", "--beta", "2"])
    assert isinstance(config, DPOConfig) and config.loss_type == "simpo"


def test_sigkill_then_resume_is_bit_identical(tiny_model_dirs, tmp_path):
    """The reference log-probs are precomputed from the starting weights again, before the checkpoint loads."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(dpo_args(tiny_model_dirs["gpt2"], whole)) == 0
    args = dpo_args(tiny_model_dirs["gpt2"], broken)
    assert run_worker("kill_after_save", 4, args) == -signal.SIGKILL
    assert main(args + ["--resume", "auto"]) == 0
    assert_identical(broken, whole)


DPO_RUN = ["--max_datasets_size", "32", "--batch_size", "8", "--eval_ratio", "0.25"]
GRPO_RUN = ["--reward_fn", "minichatgpt.demo:hidden_rule_reward", "--max_datasets_size", "16", "--experience_batch_size",
            "4", "--train_batch_size", "8", "--max_new_tokens", "6"]


def run_torchrun(command: str, strategy: str, model_dir: str, save_path, extra) -> list:
    """``minichatgpt COMMAND`` on two gloo processes; its metrics rows, once it has finished and rank 0 alone
    has written the metrics and the model."""
    import json
    import subprocess

    from test_scripts_distributed import deepspeed_available, free_port

    if strategy.startswith("deepspeed") and not deepspeed_available():
        pytest.skip("deepspeed is not installed (pip install -e .[deepspeed])")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "minichatgpt.cli", command, "--strategy", strategy, "--pretrain",
           model_dir, "--save_path", str(save_path), "--log_interval", "1", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (save_path / "metrics.jsonl").read_text().splitlines()]
    assert rows and len({json.dumps(r) for r in rows}) == len(rows)
    assert (save_path / "model.safetensors").exists()
    return rows


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
@pytest.mark.parametrize("command,extra", [("dpo", DPO_RUN), ("grpo", GRPO_RUN)])
def test_under_torchrun(strategy, command, extra, tiny_model_dirs, tmp_path):
    """Two gloo processes: the run finishes, rank 0 alone writes metrics and the model."""
    run_torchrun(command, strategy, tiny_model_dirs["gpt2"], tmp_path, extra)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
@pytest.mark.parametrize("command,extra", [
    ("dpo", DPO_RUN + ["--reference", "adapters_off", "--lr", "1e-2"]),
    ("grpo", GRPO_RUN + ["--kl_coef", "0.5", "--actor_lr", "1e-2"])])
def test_lora_with_adapters_off_reference_under_torchrun(strategy, command, extra, tiny_model_dirs, tmp_path):
    """LoRA with the policy's adapters-off base as the reference (DPO's ``--reference adapters_off``; GRPO
    builds no reference model with LoRA) on two gloo processes: the run finishes, the adapters moved the
    policy away from its reference (a non-zero KL / log-ratio), and the saved model is the merged one."""
    rows = run_torchrun(command, strategy, tiny_model_dirs["gpt2"], tmp_path, ["--lora_rank", "4", *extra])
    assert "adapter" in os.listdir(tmp_path)
    before = load_file(os.path.join(tiny_model_dirs["gpt2"], "model.safetensors"))
    after = load_file(str(tmp_path / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after if k in before)
    moved = [r for r in rows if abs(r.get("kl", r.get("chosen_reward", 0.0))) > 0]
    assert moved, rows
