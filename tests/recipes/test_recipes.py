"""The scripts' code paths: the pipeline end to end (reduced), real model directories, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from minichatgpt import demo
from minichatgpt.data import DataError
from minichatgpt.recipes import pipeline, ppo, rm, sft
from minichatgpt.recipes.checks import UsageError
from minichatgpt.recipes.configs import SFT_DEMO, PPOConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REDUCED = ["--eval_prompts", "32",
           "--sft_args", "--max_datasets_size 256 --max_epochs 1",
           "--rm_args", "--max_datasets_size 256 --max_epochs 1",
           "--ppo_args", "--num_episodes 2 --max_timesteps 1 --update_timesteps 1 --experience_batch_size 16 "
                         "--train_batch_size 16 --max_epochs 1"]


@pytest.fixture(scope="module")
def reduced_pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    summary = pipeline.main(["--output_dir", str(out)] + REDUCED)
    return out, summary


def test_pipeline_writes_every_stage(reduced_pipeline):
    out, summary = reduced_pipeline
    for stage in ("sft", "ppo"):
        AutoModelForCausalLM.from_pretrained(out / stage)  # plain transformers loads each stage's result
    AutoModelForSequenceClassification.from_pretrained(out / "rm")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"sft", "rm", "ppo"}
    assert sum(r["stage"] == "ppo" and "reward" in r for r in rows) == 2  # one line per PPO update
    saved = json.loads((out / "summary.json").read_text())
    for policy in ("sft", "ppo"):
        assert 0.0 <= saved["evaluation"][policy]["ground_truth"] <= 1.0
    assert saved["evaluation"]["sft"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-4)  # SFT vs itself
    assert 0.0 <= saved["evaluation"]["rm_heldout_accuracy"] <= 1.0
    assert (out / "ppo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["performance"]) >= {"generation", "experience", "training", "overall"}


def test_ppo_changes_the_policy(reduced_pipeline):
    out, _ = reduced_pipeline
    sft_model = AutoModelForCausalLM.from_pretrained(out / "sft")
    ppo_model = AutoModelForCausalLM.from_pretrained(out / "ppo")
    assert any(not torch.equal(a, b) for a, b in zip(sft_model.parameters(), ppo_model.parameters()))


def test_ppo_recipe_with_lora_shares_reference_and_reward_backbone(reduced_pipeline, tmp_path):
    out, _ = reduced_pipeline
    args = ppo.build_parser().parse_args([
        "--pretrain", str(out / "sft"), "--rm_pretrain", str(out / "rm"), "--lora_rank", "4",
        "--num_episodes", "1", "--max_timesteps", "1", "--update_timesteps", "1", "--experience_batch_size", "8",
        "--train_batch_size", "8", "--max_epochs", "1", "--max_new_tokens", "8", "--save_path", str(tmp_path)])
    actor, critic, reward_model, reference = ppo.build_models(args)
    assert reference is None and reward_model.model is critic.model
    trainable = [name for name, p in critic.named_parameters() if p.requires_grad]
    assert "value_head.weight" in trainable and any("lora_" in name for name in trainable)
    assert not any(p.requires_grad for p in reward_model.value_head.parameters())
    result = ppo.run(args)
    assert result["metrics"]["kl_coef"] == args.kl_coef
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path)  # adapters merged into a plain model


def test_sft_on_a_local_model_directory_and_data_file(tiny_model_dirs, tmp_path):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(demo.sft_records(48)))
    out = tmp_path / "sft"
    metrics = sft.main(["--pretrain", tiny_model_dirs["llama"], "--dataset", str(data), "--save_path", str(out),
                        "--batch_size", "8", "--accimulation_steps", "2", "--max_len", "64", "--lr", "1e-3"])
    assert metrics["eval_loss"] > 0
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    assert (out / "metrics.jsonl").exists()


def test_rm_accepts_the_loss_fn_flag(tiny_model_dirs, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in demo.preference_records(32)))
    metrics = rm.main(["--pretrain", tiny_model_dirs["opt"], "--dataset", str(data), "--loss_fn", "log_exp",
                       "--batch_size", "8", "--max_len", "64", "--eval_ratio", "0.25"])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


def test_bad_dataset_row_is_named_before_training(tiny_model_dirs, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 3}\n')
    with pytest.raises(DataError, match=r"broken\.jsonl.*2.*output"):
        sft.main(["--pretrain", tiny_model_dirs["gpt2"], "--dataset", str(data)])


def test_unwritable_save_path_fails_early(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match=r"--save_path .*file"):
        sft.main(["--save_path", str(blocker / "out"), "--max_datasets_size", "8"])


def test_cli_lists_commands_and_rejects_unknown_ones():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    ok = subprocess.run([sys.executable, "-m", "minichatgpt.cli"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "pipeline" in ok.stdout and "serve" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "minichatgpt.cli", "train"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_sft.py", "train_reward_model.py"])
def test_example_scripts_run_with_no_arguments(script, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script)], cwd=tmp_path,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "eval_" in result.stdout


def test_ppo_without_an_sft_model_runs_the_pipeline_with_the_given_flags(monkeypatch):
    from minichatgpt.recipes import commands, pipeline as pipeline_module

    seen = []
    monkeypatch.setattr(pipeline_module, "run", lambda config: seen.append(config) or {})
    commands.ppo(["--save_path", "out/x", "--num_episodes=3", "--greedy", "--strategy", "ddp", "--kl_coef", "0.2",
                  "--prompt_path", "prompts.jsonl"])
    config = seen[0]
    assert (config.output_dir, config.strategy, config.prompt_dataset) == ("out/x", "ddp", "prompts.jsonl")
    ppo_stage = config.ppo
    assert (ppo_stage.num_episodes, ppo_stage.greedy, ppo_stage.kl_coef) == (3, True, 0.2)
    assert (ppo_stage.strategy, ppo_stage.prompt_path, ppo_stage.save_path) == ("ddp", "prompts.jsonl", "out/x/ppo")
    # the SFT stage has neither a model nor data: the built-in task's sizes; PPO has its prompts: the defaults
    assert (config.sft.batch_size, ppo_stage.max_timesteps) == (SFT_DEMO["batch_size"], PPOConfig.max_timesteps)
    assert (config.sft.pretrain, config.rm.pretrain, ppo_stage.rm_pretrain) == (None, "out/x/sft", "out/x/rm")


@pytest.mark.slow
def test_pipeline_with_dpo_instead_of_rm_and_ppo(tmp_path):
    summary = pipeline.main(["--algo", "dpo", "--output_dir", str(tmp_path), "--eval_prompts", "16",
                             "--sft_args", "--max_datasets_size 256 --max_epochs 1",
                             "--dpo_args", "--max_datasets_size 256 --max_epochs 1"])
    assert set(summary["stages"]) == {"sft", "dpo"} and not (tmp_path / "rm").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
    assert summary["evaluation"]["dpo"]["kl_to_reference"] > 0  # DPO moved the policy away from SFT
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"sft", "dpo"}
