"""Critic and reward-model heads sized from what the backbone outputs, not from ``hidden_size``.

OPT checkpoints such as opt-350m project the decoder output from ``hidden_size`` down to
``word_embed_proj_dim`` before the LM head; the value head reads that projected output.
"""

import torch
from torch.testing import assert_close
from transformers import AutoModelForSequenceClassification

from conftest import tiny_config
from minichatgpt.nn import Actor, Critic, RewardModel


def test_opt_with_projection_builds_critic_and_reward_model(tmp_path, word_tokenizer):
    torch.manual_seed(0)
    config = dict(tiny_config("opt", len(word_tokenizer)), hidden_size=48, word_embed_proj_dim=32)
    Actor(config=config).model.save_pretrained(tmp_path / "lm")
    ids = torch.randint(3, len(word_tokenizer), (2, 7))
    mask = torch.ones_like(ids)

    critic = Critic(pretrained=str(tmp_path / "lm"))
    assert critic.value_head.in_features == 32
    assert critic(ids, mask, 3).shape == (2, 3)

    rm = RewardModel(pretrained=str(tmp_path / "lm")).eval()
    assert rm(ids, mask).shape == (2,)
    rm.save_pretrained(str(tmp_path / "rm"), tokenizer=word_tokenizer)
    hf_rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert_close(hf_rm(ids).logits.squeeze(-1), rm(ids, mask), atol=1e-5, rtol=1e-4)
    again = RewardModel(pretrained=str(tmp_path / "rm")).eval()
    assert_close(again(ids, mask), rm(ids, mask))
