"""PPO's model placement flags end to end: ``--actor_zero_stage`` / ``--critic_zero_stage`` /
``--offload_reference_model`` reach the strategy, bad combinations are usage errors naming the flag (exit 2),
and a torchrun job with an actor ZeRO-3 engine, a critic ZeRO-1 engine and offloaded frozen models is killed
after a checkpoint and resumes bit-identical to an uninterrupted one."""

import json
import os

import pytest

from minichatgpt.cli import main
from minichatgpt.config import UsageError
from minichatgpt.recipes.checks import check_command
from minichatgpt.recipes.model_flags import strategy_options
from recipes.test_resume import WORKER, assert_identical, free_port, stage_args, torchrun


def usage_error(command: str, argv: list) -> str:
    with pytest.raises(UsageError) as err:
        check_command(command, argv)
    return str(err.value)


@pytest.mark.parametrize("command,argv,expected", [
    ("ppo", ["--strategy", "ddp", "--actor_zero_stage", "3"], "--actor_zero_stage 3"),
    ("ppo", ["--strategy", "fsdp", "--critic_zero_stage", "1"], "--critic_zero_stage 1"),
    ("grpo", ["--strategy", "naive", "--reward_fn", "minichatgpt.demo:hidden_rule_reward", "--actor_zero_stage", "2"],
     "--actor_zero_stage 2"),
    ("ppo", ["--lora_rank", "4", "--offload_reference_model"], "--no_shared_reference"),
    ("grpo", ["--lora_rank", "4", "--reward_fn", "minichatgpt.demo:hidden_rule_reward",
              "--offload_reference_model"], "nothing to offload"),
])
def test_invalid_placements_are_usage_errors_naming_the_flag(command, argv, expected):
    message = usage_error(command, argv)
    assert expected in message
    if "zero_stage" in expected:
        assert "deepspeed_* strategies only" in message


def test_a_stage_outside_1_to_3_exits_2_naming_the_flag(capsys):
    for stage in ("0", "4"):
        with pytest.raises(SystemExit) as done:
            main(["ppo", "--strategy", "deepspeed_zero2", "--critic_zero_stage", stage])
        assert done.value.code == 2
        assert "--critic_zero_stage" in capsys.readouterr().err


def test_the_pipeline_checks_its_ppo_section(tmp_path):
    message = usage_error("pipeline", ["--output_dir", str(tmp_path), "--strategy", "ddp", "--ppo_args",
                                       "--actor_zero_stage 3"])
    assert "the ppo stage" in message and "--actor_zero_stage 3" in message


def test_flags_become_strategy_options(tiny_model_dirs):
    model = tiny_model_dirs["gpt2"]
    ppo = check_command("ppo", ["--pretrain", model, "--strategy", "deepspeed_zero2", "--actor_zero_stage", "3",
                                "--offload_reference_model"])
    assert strategy_options(ppo)["pair_stages"] == (3, None)  # actor, critic in prepare's order
    assert strategy_options(ppo)["offload_frozen"] is True
    grpo = check_command("grpo", ["--pretrain", model, "--strategy", "deepspeed_zero3", "--actor_zero_stage", "1",
                                  "--reward_fn", "minichatgpt.demo:hidden_rule_reward"])
    assert strategy_options(grpo)["pair_stages"] == (1,) and "offload_frozen" not in strategy_options(grpo)
    plain = check_command("ppo", ["--pretrain", model])
    assert "pair_stages" not in strategy_options(plain) and "offload_frozen" not in strategy_options(plain)


def test_offloaded_naive_ppo_writes_the_same_model(tiny_model_dirs, tmp_path):
    """On the CPU the move is a no-op, so the run must be exactly the run without the flag."""
    args = lambda path: stage_args("ppo", tiny_model_dirs["gpt2"], path)  # noqa: E731
    assert main(args(tmp_path / "plain")) == 0
    assert main(args(tmp_path / "offloaded") + ["--offload_reference_model"]) == 0
    assert_identical(tmp_path / "offloaded", tmp_path / "plain")


@pytest.mark.slow
@pytest.mark.distributed
def test_mixed_zero_stages_with_offloaded_frozen_models_resume_bit_identical(tiny_model_dirs, tmp_path):
    pytest.importorskip("deepspeed")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    placement = ["--strategy", "deepspeed_zero2", "--actor_zero_stage", "3", "--critic_zero_stage", "1",
                 "--offload_reference_model"]
    args = lambda path: stage_args("ppo", tiny_model_dirs["gpt2"], path) + placement  # noqa: E731
    assert torchrun(["-m", "minichatgpt.cli", *args(whole)], tmp_path, free_port()) == 0
    assert torchrun([WORKER, "kill_after_save", "4", *args(broken)], tmp_path, free_port()) != 0
    assert not os.path.exists(broken / "model.safetensors")
    checkpoint = broken / "checkpoints" / "checkpoint-4"
    files = set(os.listdir(checkpoint))  # each sharded optimizer: one file per rank
    assert {f"{m}_optim.rank{r}.pt" for m in ("actor", "critic") for r in (0, 1)} <= files
    assert json.loads((checkpoint / "manifest.json").read_text())["config"]["actor_zero_stage"] == 3
    assert torchrun(["-m", "minichatgpt.cli", *args(broken), "--resume", "auto"], tmp_path, free_port()) == 0
    assert_identical(broken, whole)
