"""Trainer settings as config objects: keyword arguments of the original constructors override them."""

import dataclasses
from copy import deepcopy

import pytest
import torch

from minichatgpt.nn import Actor, Critic, RewardModel
from minichatgpt.recipes.configs import PPOConfig, SFTConfig
from minichatgpt.trainer import PPOTrainer, SFTTrainer
from minichatgpt.trainer.configs import PPOTrainerConfig, SupervisedTrainerConfig, with_overrides
from minichatgpt.trainer.strategies import NaiveStrategy


def test_overrides_by_field_name_or_old_spelling():
    config, rest = with_overrides(None, PPOTrainerConfig, {"eps_clip": 0.1, "value_clip": None, "kl_coef": 0.3,
                                                           "max_length": 40}, "PPOTrainer", ("max_length",))
    assert (config.clip_eps, config.value_clip_eps, config.kl_coef, rest) == (0.1, None, 0.3, {"max_length": 40})
    base = PPOTrainerConfig(gamma=0.9)
    assert with_overrides(base, PPOTrainerConfig, {}, "x")[0] is base  # nothing to change: the same object
    with pytest.raises(TypeError, match="unknown argument 'kl_coeff'"):
        with_overrides(None, PPOTrainerConfig, {"kl_coeff": 1.0}, "PPOTrainer")
    with pytest.raises(TypeError, match="config must be a PPOTrainerConfig"):
        with_overrides(0.1, PPOTrainerConfig, {}, "PPOTrainer")


def test_command_configs_extend_the_trainer_configs():
    assert issubclass(PPOConfig, PPOTrainerConfig) and issubclass(SFTConfig, SupervisedTrainerConfig)
    trainer_fields = {f.name for f in dataclasses.fields(PPOTrainerConfig)}
    assert trainer_fields <= {f.name for f in dataclasses.fields(PPOConfig)}
    assert PPOConfig().max_epochs == 5 and PPOTrainerConfig().max_epochs == 1  # the command's own default


def build_ppo(tiny_model_dirs, word_tokenizer, config=None, **kwargs):
    path = tiny_model_dirs["gpt2"]
    actor, critic = Actor(pretrained=path), Critic(pretrained=path)
    reward_model = RewardModel(deepcopy(critic.model), deepcopy(critic.value_head))
    return PPOTrainer(NaiveStrategy("cpu"), actor, critic, reward_model, deepcopy(actor),
                      torch.optim.Adam(actor.parameters()), torch.optim.Adam(critic.parameters()), config,
                      tokenizer=word_tokenizer, **kwargs)


def test_ppo_trainer_takes_a_config_and_the_seed_keywords(tiny_model_dirs, word_tokenizer):
    config = PPOConfig(kl_coef=0.2, clip_eps=0.15, temperature=0.5, max_new_tokens=7, greedy=True)
    trainer = build_ppo(tiny_model_dirs, word_tokenizer, config, train_batch_size=3)
    assert trainer.config.clip_eps == 0.15 and trainer.kl_ctl.value == 0.2 and trainer.buffer.sample_batch_size == 3
    assert (trainer.generate_kwargs["max_new_tokens"], trainer.generate_kwargs["do_sample"]) == (7, False)
    seed = build_ppo(tiny_model_dirs, word_tokenizer, kl_coef=0.05, eps_clip=0.3, do_sample=True, max_length=20)
    assert (seed.config.clip_eps, seed.kl_ctl.value, seed.config.greedy) == (0.3, 0.05, False)
    assert seed.generate_kwargs["max_length"] == 20 and "max_new_tokens" not in seed.generate_kwargs
    with pytest.raises(TypeError, match="unknown argument 'beam_width'"):
        build_ppo(tiny_model_dirs, word_tokenizer, beam_width=2)


def test_sft_trainer_takes_a_config(tiny_model_dirs):
    model = Actor(pretrained=tiny_model_dirs["gpt2"])
    optim = torch.optim.AdamW(model.parameters())
    trainer = SFTTrainer(model, NaiveStrategy("cpu"), optim, config=SFTConfig(accumulation_steps=3, max_epochs=2),
                         accimulation_steps=4, checkpoint=None)
    assert (trainer.accumulation_steps, trainer.max_epochs) == (4, 2)


def test_the_decode_field_reaches_the_rollouts(tiny_model_dirs, word_tokenizer, monkeypatch):
    trainer = build_ppo(tiny_model_dirs, word_tokenizer, PPOConfig(decode="static", max_new_tokens=3))
    assert trainer.generate_kwargs["decode"] == "static"
    assert build_ppo(tiny_model_dirs, word_tokenizer).generate_kwargs["decode"] == "auto"
    seen = []
    monkeypatch.setattr("minichatgpt.nn.generation.resolve_decode", lambda decode, *args: seen.append(decode) or
                        "dynamic")
    ids = torch.tensor([[5, 6, 7]])
    trainer.make_experience({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert seen == ["static"]
