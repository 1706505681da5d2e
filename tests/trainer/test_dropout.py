"""Dropout during PPO: every dropout probability of actor and critic is zero once ``PPOTrainer`` is
built, so training-mode forwards are deterministic and the first minibatch's ratio is exactly 1.

Each family gets its published dropout fields set above zero, including the float attributes that
modules copy from the config at init and pass to functional dropout (OPT, BLOOM, LLaMA, GPT-NeoX).
"""

from copy import deepcopy

import pytest
import torch

from conftest import tiny_config
from minichatgpt.functional import log_probs_from_logits
from minichatgpt.nn import Actor, Critic, RewardModel
from minichatgpt.trainer import PPOTrainer
from minichatgpt.trainer.strategies import NaiveStrategy

EOS, PAD = 2, 0

DROPOUT_FIELDS = {
    "gpt2": dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
    "opt": dict(dropout=0.1, attention_dropout=0.1, layerdrop=0.5),
    "bloom": dict(hidden_dropout=0.1, attention_dropout=0.1),
    "llama": dict(attention_dropout=0.1),
    "gpt_neox": dict(hidden_dropout=0.1, attention_dropout=0.1),
}


def dropout_config(family: str) -> dict:
    if family == "gpt_neox":
        config = dict(model_type="gpt_neox", num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                      num_attention_heads=2, max_position_embeddings=128, vocab_size=77, pad_token_id=PAD,
                      bos_token_id=EOS, eos_token_id=EOS)
    else:
        config = tiny_config(family)
    # Eager attention: the path whose dropout is functional and reads the module's float attribute.
    return dict(config, attn_implementation="eager", **DROPOUT_FIELDS[family])


def build_trainer(family: str):
    torch.manual_seed(0)
    config = dropout_config(family)
    actor, critic = Actor(config=config), Critic(config=config)
    reward_model, reference = RewardModel(config=config), deepcopy(actor)
    trainer = PPOTrainer(NaiveStrategy("cpu"), actor, critic, reward_model, reference,
                         torch.optim.Adam(actor.parameters(), 1e-3), torch.optim.Adam(critic.parameters(), 1e-3),
                         train_batch_size=4, eos_token_id=EOS, pad_token_id=PAD, max_new_tokens=6)
    return trainer, actor, critic


@pytest.mark.parametrize("family", sorted(DROPOUT_FIELDS))
def test_ppo_actor_and_critic_forwards_are_deterministic_in_training_mode(family):
    _, actor, critic = build_trainer(family)
    actor.train()
    critic.train()
    ids = torch.randint(3, 77, (4, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(actor(ids, mask), actor(ids, mask))
        assert torch.equal(critic(ids, mask, 5), critic(ids, mask, 5))


@pytest.mark.parametrize("family", sorted(DROPOUT_FIELDS))
def test_first_minibatch_ratio_is_one(family):
    trainer, actor, _ = build_trainer(family)
    prompts = torch.randint(3, 77, (4, 8))
    experience = trainer.make_experience({"input_ids": prompts, "attention_mask": torch.ones_like(prompts)})
    actor.train()  # as training_step does before its forward
    num_actions = experience.num_actions
    with torch.no_grad():
        logits = actor(experience.sequences, experience.attention_mask, num_actions)
    log_probs = log_probs_from_logits(logits, experience.sequences[:, -num_actions:])
    log_ratio = (log_probs - experience.log_probs) * experience.action_mask
    assert log_ratio.abs().max() < 1e-5


@pytest.mark.parametrize("family", ["opt", "gpt2"])
def test_dropout_is_kept_outside_ppo(family):
    """SFT and reward-model training keep the model's dropout: only PPOTrainer turns it off."""
    torch.manual_seed(0)
    actor = Actor(config=dropout_config(family)).train()
    ids = torch.randint(3, 77, (4, 12))
    with torch.no_grad():
        assert not torch.equal(actor(ids, torch.ones_like(ids)), actor(ids, torch.ones_like(ids)))


def test_dropout_is_zeroed_without_turning_gradient_checkpointing_off():
    torch.manual_seed(0)
    config = dropout_config("opt")
    actor, critic = Actor(config=config, checkpoint=True), Critic(config=config, checkpoint=True)
    PPOTrainer(NaiveStrategy("cpu"), actor, critic, RewardModel(config=config), deepcopy(actor),
               torch.optim.Adam(actor.parameters()), torch.optim.Adam(critic.parameters()), eos_token_id=EOS,
               pad_token_id=PAD)
    actor.train()
    assert actor.model.is_gradient_checkpointing and critic.model.is_gradient_checkpointing
    ids = torch.randint(3, 77, (2, 10))
    first = actor(ids, torch.ones_like(ids))
    first.sum().backward()  # checkpointed recomputation sees the same (zero) dropout
    assert torch.equal(first.detach(), actor(ids, torch.ones_like(ids)).detach())
