"""The reference policy stays where PPO started when the actor shares its weights (LoRA, adapters off)
and LoRA also trains base biases (``lora_train_bias`` all / lora_only)."""

import pytest
import torch
from torch.testing import assert_close

from conftest import tiny_config
from minichatgpt.nn import Actor, Critic, RewardModel, Rollout
from minichatgpt.recipes import ppo
from minichatgpt.trainer import PPOTrainer
from minichatgpt.trainer.strategies import NaiveStrategy

EOS, PAD = 2, 0


@pytest.mark.parametrize("train_bias", ["none", "all", "lora_only"])
def test_shared_reference_log_probs_do_not_move_after_an_update(train_bias, capsys):
    torch.manual_seed(0)
    config = tiny_config("gpt2")
    actor = Actor(config=config, lora_rank=4, lora_train_bias=train_bias)
    critic, reward_model = Critic(config=config), RewardModel(config=config)
    trainable = [p for p in actor.parameters() if p.requires_grad]
    trainer = PPOTrainer(NaiveStrategy("cpu"), actor, critic, reward_model, None, torch.optim.Adam(trainable, 1e-2),
                         torch.optim.Adam(critic.parameters(), 1e-2), train_batch_size=4, eos_token_id=EOS,
                         pad_token_id=PAD, max_new_tokens=6)
    assert "reference" in capsys.readouterr().out  # the log says which reference was chosen
    prompts = torch.randint(3, 77, (4, 8))
    experience = trainer.make_experience({"input_ids": prompts, "attention_mask": torch.ones_like(prompts)})
    rollout = Rollout(experience.sequences, experience.attention_mask, experience.action_mask, experience.log_probs)
    before = trainer.maker.reference_log_probs(rollout)
    biases = {n: p.detach().clone() for n, p in actor.named_parameters() if "bias" in n and p.requires_grad}
    trainer.buffer.append(experience)
    trainer.learn()
    if train_bias != "none":
        assert any(not torch.equal(p, biases[n]) for n, p in actor.named_parameters() if n in biases)
    assert_close(trainer.maker.reference_log_probs(rollout), before, atol=1e-6, rtol=0)
    for name, p in actor.named_parameters():  # the trained values are back after the reference pass
        if name in biases:
            assert not torch.equal(p, biases[name]) or train_bias == "none"


@pytest.mark.parametrize("train_bias", ["all", "lora_only"])
def test_ppo_recipe_keeps_a_frozen_reference_when_lora_trains_biases(train_bias, tiny_model_dirs):
    args = ppo.build_parser().parse_args(["--pretrain", tiny_model_dirs["gpt2"], "--lora_rank", "4",
                                          "--lora_train_bias", train_bias])
    actor, critic, reward_model, reference = ppo.build_models(args)
    assert reference is not None and not any(p.requires_grad for p in reference.parameters())
    assert reward_model.model is not critic.model
    assert "frozen copy" in ppo.reference_choice(args)[1]  # the sentence the recipe logs
