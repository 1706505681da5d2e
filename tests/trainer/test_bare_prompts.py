"""Prompts given as bare (B, P) tensors, as the original API allowed: with pad == EOS (GPT-2) an EOS
inside a prompt is a real token, so the attention mask must mark only the left padding."""

from copy import deepcopy

import torch

from conftest import tiny_config
from minichatgpt.nn import Actor, Critic, RewardModel
from minichatgpt.trainer import PPOTrainer
from minichatgpt.trainer.strategies import NaiveStrategy

EOS = PAD = 2


def test_bare_prompt_tensor_masks_left_padding_only():
    torch.manual_seed(0)
    config = dict(tiny_config("gpt2"), pad_token_id=PAD)
    actor, critic, reward_model = Actor(config=config), Critic(config=config), RewardModel(config=config)
    trainer = PPOTrainer(NaiveStrategy("cpu"), actor, critic, reward_model, deepcopy(actor),
                         torch.optim.Adam(actor.parameters()), torch.optim.Adam(critic.parameters()),
                         eos_token_id=EOS, pad_token_id=PAD, max_new_tokens=3)
    prompts = torch.tensor([[PAD, PAD, 5, EOS, 6],
                            [5, 6, EOS, 7, 8]])
    experience = trainer.make_experience(prompts)
    assert experience.attention_mask[:, :5].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
