"""The real pretrained model from ../shared/models with real preference data from ../shared/data."""

import math
import os

import pytest

from conftest import SHARED_DATA, SMOLLM2_GGUF, requires_shared
from minichatgpt.recipes import rm

PAIRS = os.path.join(SHARED_DATA, "instruction_data_with_preference.json")


@pytest.mark.slow
@requires_shared(SMOLLM2_GGUF)
@requires_shared(PAIRS)
def test_reward_model_trains_briefly_on_smollm2_with_real_pairs(tmp_path):
    metrics = rm.main(["--pretrain", SMOLLM2_GGUF, "--dataset", PAIRS, "--max_datasets_size", "20",
                       "--max_len", "64", "--batch_size", "4", "--lora_rank", "8", "--lr", "5e-4",
                       "--eval_ratio", "0.2", "--max_grad_norm", "1.0", "--log_interval", "1", "--save_path", str(tmp_path / "rm")])
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (tmp_path / "rm" / "adapter" / "adapter_config.json").exists()


PROMPTS = os.path.join(SHARED_DATA, "instinwild_seed_prompts_en.jsonl")


@pytest.mark.slow
@requires_shared(SMOLLM2_GGUF)
@requires_shared(PROMPTS)
def test_ppo_with_lora_on_smollm2_and_real_prompts(tmp_path):
    """The GGUF model as actor, critic and reward model (LoRA: one shared reference/RM backbone), a
    resumable checkpoint of the adapters, and a final directory plain transformers loads."""
    from transformers import AutoModelForCausalLM

    from minichatgpt.recipes import ppo

    result = ppo.main(["--pretrain", SMOLLM2_GGUF, "--prompt_path", PROMPTS, "--lora_rank", "4",
                       "--max_datasets_size", "4", "--num_episodes", "1", "--max_timesteps", "1",
                       "--update_timesteps", "1", "--experience_batch_size", "2", "--train_batch_size", "2",
                       "--max_epochs", "1", "--max_new_tokens", "8", "--max_input_len", "48", "--save_interval", "1",
                       "--save_path", str(tmp_path)])
    assert math.isfinite(result["metrics"]["policy_loss"]) and result["performance"]["generation"]["tokens_per_s"] > 0
    checkpoint = tmp_path / "checkpoints" / "checkpoint-1"
    assert (checkpoint / "actor.safetensors").stat().st_size < 10e6  # adapters only, not the 135M base
    AutoModelForCausalLM.from_pretrained(tmp_path)
