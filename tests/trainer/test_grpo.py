"""Critic-free RL (GRPO, Dr. GRPO, RLOO, REINFORCE++) with tiny models and code rewards."""

import pytest
import torch
from torch.testing import assert_close

from conftest import tiny_config
from minichatgpt import demo
from minichatgpt.data import PromptDataset, RewardPromptCollator
from minichatgpt.nn import Actor
from minichatgpt.trainer.grpo import GRPOTrainer
from minichatgpt.trainer.strategies import NaiveStrategy


def pleasant_share(prompts, responses, columns):
    """A dense learnable reward: the share of a response's words that are pleasant adjectives."""
    return torch.tensor([sum(w in demo.PLEASANT for w in r.split()) / max(len(r.split()), 1) for r in responses])


def grpo_setup(word_tokenizer, lora_rank=0, n=32, batch=8, lr=1e-2, **kwargs):
    torch.manual_seed(0)
    actor = Actor(config=tiny_config("gpt2", len(word_tokenizer)), lora_rank=lora_rank)
    reference = None if lora_rank else Actor(config=tiny_config("gpt2", len(word_tokenizer))).requires_grad_(False)
    if reference is not None:
        reference.load_state_dict(actor.state_dict())
    prompts = PromptDataset(demo.prompt_records(n, seed=2), word_tokenizer, max_len=32)
    strategy = NaiveStrategy("cpu")
    loader = strategy.setup_dataloader(prompts, batch, collate_fn=RewardPromptCollator(word_tokenizer.pad_token_id))
    optim = torch.optim.Adam([p for p in actor.parameters() if p.requires_grad], lr=lr)
    (actor, optim), reference = strategy.prepare((actor, optim), reference)
    trainer = GRPOTrainer(actor, strategy, optim, reward_fn=kwargs.pop("reward_fn", pleasant_share),
                          reference_model=reference, tokenizer=word_tokenizer, max_new_tokens=8, **kwargs)
    return trainer, loader


def test_experience_groups_and_advantages(word_tokenizer):
    trainer, loader = grpo_setup(word_tokenizer, num_samples_per_prompt=4)
    batch = next(iter(loader))
    exp = trainer.make_experience(batch)
    B, A = exp.action_mask.shape
    assert B == 4 * 8
    prompts = exp.sequences[:, :-A].view(8, 4, -1)
    assert bool((prompts == prompts[:, :1]).all())  # each prompt's G samples are contiguous
    per_sample = exp.advantages.sum(-1) / exp.action_mask.sum(-1)
    scores = exp.scores.view(8, 4)
    # GRPO's KL is a loss term: the advantages are the group-normalized raw scores
    expected = (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-4)
    assert_close(per_sample, expected.view(-1), atol=1e-5, rtol=1e-4)
    assert_close(exp.ref_log_probs, exp.log_probs, atol=1e-4, rtol=1e-4)  # the reference is the start policy


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
def test_reward_rises(word_tokenizer, algo):
    trainer, loader = grpo_setup(word_tokenizer, algo=algo, num_samples_per_prompt=4, max_epochs=2,
                                 train_batch_size=16, kl_coef=0.01)
    torch.manual_seed(1)
    rewards = [trainer.make_experience(next(iter(loader))).scores.mean()]  # before training
    trainer.fit(loader, num_episodes=3)  # (repeated fit(loader) calls resume at the end: one episode in all)
    torch.manual_seed(1)
    rewards.append(trainer.make_experience(next(iter(loader))).scores.mean())
    assert float(rewards[-1]) > float(rewards[0]) + 0.3, rewards  # measured: about 0.19 -> 0.88..1.0


def test_lora_reference_is_adapters_off_and_no_critic(word_tokenizer):
    trainer, loader = grpo_setup(word_tokenizer, lora_rank=4, num_samples_per_prompt=2)
    trainer.fit(loader)
    exp = trainer.make_experience(next(iter(loader)))
    with trainer.actor.reference():
        logits = trainer.actor(exp.sequences, exp.attention_mask, exp.action_mask.size(1))
    log_probs = torch.log_softmax(logits.float(), -1).gather(-1, exp.sequences[:, -exp.action_mask.size(1):, None])
    assert_close(exp.ref_log_probs, log_probs.squeeze(-1) * exp.action_mask, atol=1e-4, rtol=1e-4)
    assert not hasattr(trainer, "critic")


def test_bad_arguments(word_tokenizer):
    with pytest.raises(ValueError, match="algo"):
        grpo_setup(word_tokenizer, algo="ppo")
    with pytest.raises(ValueError, match="num_samples_per_prompt"):
        grpo_setup(word_tokenizer, num_samples_per_prompt=1)
    with pytest.raises(ValueError, match="reward"):
        grpo_setup(word_tokenizer, reward_fn=None)
