"""Exact resume after a crash: kill a run (SIGKILL after or during a checkpoint, or SIGTERM), resume it,
and compare its final weights and logged metrics with an uninterrupted run's, bit for bit."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from minichatgpt.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "resume_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": os.path.dirname(os.path.dirname(HERE))}


PIPELINE = ["--eval_prompts", "16", "--sft_args", "--max_datasets_size 64 --max_epochs 1 --batch_size 16",
            "--rm_args", "--max_datasets_size 64 --max_epochs 1 --batch_size 16",
            "--ppo_args", "--num_episodes 2 --max_timesteps 1 --update_timesteps 1 --experience_batch_size 8 "
                          "--train_batch_size 8 --max_epochs 1 --max_new_tokens 6"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """In-process runs use one thread like the subprocesses (OMP_NUM_THREADS=1): a different thread count
    changes the order of float reductions, and results would differ in their last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stage_args(stage: str, model_dir: str, save_path) -> list:
    common = ["--pretrain", model_dir, "--save_path", str(save_path), "--log_interval", "1", "--save_interval", "1",
              "--seed", "7"]
    if stage == "ppo":  # 2 episodes x 3 timesteps, an update every 2: checkpoints at timesteps 2, 4, 6
        return ["ppo", *common, "--rm_pretrain", model_dir, "--num_episodes", "2", "--max_timesteps", "3",
                "--update_timesteps", "2", "--experience_batch_size", "4", "--train_batch_size", "4",
                "--max_epochs", "2", "--max_new_tokens", "5", "--max_datasets_size", "12", "--actor_lr", "1e-3",
                "--critic_lr", "1e-3", "--normalize_scores", "--target_kl", "0.1"]
    # 40 records, 8 per batch, 2 epochs: 5 batches per epoch; accumulation makes 3 steps per epoch
    return [stage, *common, "--max_datasets_size", "40", "--batch_size", "8", "--max_epochs", "2",
            "--eval_ratio", "0", "--lr", "1e-3", "--accumulation_steps", "2", "--max_len", "48"]


def final_weights(save_path) -> dict:
    return load_file(os.path.join(save_path, "model.safetensors"))


def metric_lines(save_path) -> dict:
    lines = [json.loads(line) for line in open(os.path.join(save_path, "metrics.jsonl"))]
    steps = [r["step"] for r in lines]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r for r in lines}


def run_worker(fault: str, step: int, args: list) -> int:
    return subprocess.run([sys.executable, WORKER, fault, str(step), *args], env=ENV, capture_output=True,
                          text=True, timeout=300).returncode


def assert_identical(resumed, reference) -> None:
    a, b = final_weights(resumed), final_weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert metric_lines(resumed) == metric_lines(reference)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dirs, tmp_path_factory):
    """{stage: save_path} of runs that were never interrupted."""
    out = {}
    for stage in ("sft", "rm", "ppo"):
        path = tmp_path_factory.mktemp(f"whole-{stage}")
        assert main(stage_args(stage, tiny_model_dirs["gpt2"], path)) == 0
        out[stage] = path
    return out


@pytest.mark.parametrize("stage,step", [("sft", 2), ("sft", 3), ("rm", 4), ("ppo", 4)])
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(stage, step, tiny_model_dirs, uninterrupted,
                                                                  tmp_path):
    args = stage_args(stage, tiny_model_dirs["gpt2"], tmp_path)
    assert run_worker("kill_after_save", step, args) == -signal.SIGKILL
    assert not os.path.exists(tmp_path / "model.safetensors")  # it never finished
    assert main(args + ["--resume", "auto"]) == 0
    assert_identical(tmp_path, uninterrupted[stage])


def test_sigkill_during_a_checkpoint_write_falls_back_to_the_previous_one(tiny_model_dirs, uninterrupted, tmp_path):
    args = stage_args("sft", tiny_model_dirs["gpt2"], tmp_path)
    assert run_worker("kill_mid_save", 3, args) == -signal.SIGKILL
    checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2", "checkpoint-3.tmp"]
    assert main(args + ["--resume", "auto"]) == 0
    assert_identical(tmp_path, uninterrupted["sft"])
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "checkpoints"))


def test_a_corrupted_checkpoint_is_refused_and_the_previous_one_used(tiny_model_dirs, uninterrupted, tmp_path,
                                                                     capsys):
    args = stage_args("sft", tiny_model_dirs["gpt2"], tmp_path)
    assert run_worker("kill_after_save", 3, args) == -signal.SIGKILL
    damaged = tmp_path / "checkpoints" / "checkpoint-3" / "model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(args + ["--resume", "auto"]) == 0
    assert "model.safetensors fails its SHA-256 check" in capsys.readouterr().out
    assert_identical(tmp_path, uninterrupted["sft"])


def test_bf16_ppo_killed_after_a_checkpoint_resumes_bit_identical(tiny_model_dirs, tmp_path):
    """bf16 working weights are rebuilt from the float32 masters the checkpoint holds, so nothing is lost."""
    args = lambda path: stage_args("ppo", tiny_model_dirs["gpt2"], path) + ["--precision", "bf16"]  # noqa: E731
    assert main(args(tmp_path / "whole")) == 0
    assert run_worker("kill_after_save", 4, args(tmp_path / "resumed")) == -signal.SIGKILL
    assert main(args(tmp_path / "resumed") + ["--resume", "auto"]) == 0
    assert_identical(tmp_path / "resumed", tmp_path / "whole")


@pytest.mark.parametrize("stage,step", [("sft", 2), ("ppo", 3)])
def test_sigterm_saves_at_the_next_step_and_exits_cleanly(stage, step, tiny_model_dirs, uninterrupted, tmp_path):
    """PPO's step 3 is a timestep between updates: the checkpoint carries a non-empty replay buffer."""
    args = stage_args(stage, tiny_model_dirs["gpt2"], tmp_path)
    assert run_worker("sigterm", step, args) == 128 + signal.SIGTERM
    state = torch.load(tmp_path / "checkpoints" / f"checkpoint-{step}" / "trainer_state.rank0.pt", weights_only=True)
    if stage == "ppo":
        assert len(state["buffer"]) == 4  # one rollout batch waiting for the update at timestep 4
    assert not os.path.exists(tmp_path / "model.safetensors")
    assert main(args + ["--resume", "auto"]) == 0
    assert_identical(tmp_path, uninterrupted[stage])


def test_a_second_signal_exits_at_once_without_a_checkpoint(tiny_model_dirs, tmp_path):
    args = stage_args("sft", tiny_model_dirs["gpt2"], tmp_path)
    assert run_worker("sigterm_twice", 2, args) == 128 + signal.SIGTERM
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint-1"]


def test_save_total_limit_keeps_the_newest(tiny_model_dirs, tmp_path):
    assert main(stage_args("sft", tiny_model_dirs["gpt2"], tmp_path) + ["--save_total_limit", "2"]) == 0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint-5", "checkpoint-6"]
    manifest = json.loads((tmp_path / "checkpoints" / "checkpoint-6" / "manifest.json").read_text())
    assert manifest["step"] == 6 and manifest["config"]["stage"] == "sft" and manifest["config"]["lr"] == 1e-3
    assert set(manifest["files"]) == {"model.safetensors", "model_optim.pt", "trainer_state.rank0.pt"}


def test_resume_auto_without_checkpoints_starts_afresh(tiny_model_dirs, uninterrupted, tmp_path):
    assert main(stage_args("sft", tiny_model_dirs["gpt2"], tmp_path) + ["--resume", "auto"]) == 0
    assert_identical(tmp_path, uninterrupted["sft"])


def test_resume_from_a_missing_directory_is_a_usage_error(tiny_model_dirs, tmp_path, capsys):
    code = main(stage_args("sft", tiny_model_dirs["gpt2"], tmp_path) + ["--resume", str(tmp_path / "nope")])
    assert code == 2 and "--resume" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script_args: list, tmp_path, port: int) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), *script_args]
    return subprocess.run(cmd, env={**ENV, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
                          timeout=300).returncode


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("strategy,stage,step", [("ddp", "sft", 2), ("ddp", "ppo", 4), ("fsdp", "rm", 3),
                                                  ("deepspeed_zero3", "sft", 2)])
def test_distributed_job_killed_and_relaunched_resumes_bit_identical(strategy, stage, step, tiny_model_dirs,
                                                                     tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    args = lambda path: stage_args(stage, tiny_model_dirs["gpt2"], path) + ["--strategy", strategy]  # noqa: E731
    assert torchrun(["-m", "minichatgpt.cli", *args(whole)], tmp_path, free_port()) == 0
    assert torchrun([WORKER, "kill_after_save", str(step), *args(broken)], tmp_path, free_port()) != 0
    assert not os.path.exists(broken / "model.safetensors")
    assert torchrun(["-m", "minichatgpt.cli", *args(broken), "--resume", "auto"], tmp_path, free_port()) == 0
    assert_identical(broken, whole)


@pytest.mark.slow
def test_pipeline_killed_during_the_reward_model_resumes_to_the_same_result(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    args = lambda path: ["pipeline", "--output_dir", str(path), "--save_interval", "1", *PIPELINE]  # noqa: E731
    assert main(args(whole)) == 0
    env = {**ENV, "FAULT_STAGE": "rm"}
    killed = subprocess.run([sys.executable, WORKER, "kill_after_save", "2", *args(broken)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (broken / "sft" / "stage_result.json").exists() and not (broken / "rm" / "stage_result.json").exists()
    sft_checkpoints = sorted(os.listdir(broken / "sft" / "checkpoints"))
    assert main(args(broken) + ["--resume"]) == 0
    assert sorted(os.listdir(broken / "sft" / "checkpoints")) == sft_checkpoints  # SFT was not run again
    for stage in ("rm", "ppo"):
        a, b = final_weights(broken / stage), final_weights(whole / stage)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    assert metric_lines_all(broken) == metric_lines_all(whole)
    summary = lambda path: json.loads((path / "summary.json").read_text())["evaluation"]  # noqa: E731
    assert summary(broken) == summary(whole)


def metric_lines_all(out) -> list:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]
