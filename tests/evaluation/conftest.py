"""Tiny saved models for the evaluation tests: a causal LM and a reward model over a word tokenizer that
also knows the judge's answers "A" and "B"."""

import pytest
import torch

from conftest import tiny_config
from minichatgpt.demo import build_word_tokenizer, vocabulary


@pytest.fixture(scope="session")
def eval_tokenizer():
    return build_word_tokenizer(vocabulary() + ["A", "B"])


@pytest.fixture(scope="session")
def eval_model_dirs(tmp_path_factory, eval_tokenizer):
    """{"lm": a tiny LLaMA causal LM directory, "lm2": another one, "rm": a tiny reward-model directory},
    each saved with ``save_pretrained`` together with ``eval_tokenizer``."""
    from minichatgpt.nn import Actor, RewardModel

    dirs = {}
    for name, seed in (("lm", 0), ("lm2", 1)):
        torch.manual_seed(seed)
        dirs[name] = str(tmp_path_factory.mktemp(f"eval-{name}"))
        Actor(config=tiny_config("llama", len(eval_tokenizer))).save_pretrained(dirs[name], eval_tokenizer)
    torch.manual_seed(2)
    dirs["rm"] = str(tmp_path_factory.mktemp("eval-rm"))
    RewardModel(config=tiny_config("gpt2", len(eval_tokenizer))).save_pretrained(dirs["rm"], eval_tokenizer)
    return dirs
