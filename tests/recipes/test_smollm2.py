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
