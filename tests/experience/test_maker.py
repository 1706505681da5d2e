"""Experience alignment: padded batch results equal per-sample computations without padding."""

import copy

import pytest
import torch
from torch.testing import assert_close

from conftest import tiny_config
from minichatgpt.experience import ExperienceMaker
from minichatgpt.functional import compute_gae, compute_kl, compute_rewards, log_probs_from_logits
from minichatgpt.nn import Actor, Critic, RewardModel
from minichatgpt.nn.generation import Rollout

EOS, PAD = 2, 0


def build_rollout(prompts, responses):
    """Left-pad prompts and right-pad responses by hand: (B, P + A) with exact masks."""
    P, A = max(map(len, prompts)), max(map(len, responses))
    seqs, attn, acts = [], [], []
    for p, r in zip(prompts, responses):
        seqs.append([PAD] * (P - len(p)) + p + r + [PAD] * (A - len(r)))
        attn.append([0] * (P - len(p)) + [1] * (len(p) + len(r)) + [0] * (A - len(r)))
        acts.append([1] * len(r) + [0] * (A - len(r)))
    return torch.tensor(seqs), torch.tensor(attn), torch.tensor(acts)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bloom", "opt"])
def test_padded_experience_matches_per_sample_computation(family):
    torch.manual_seed(0)
    cfg = tiny_config(family)
    actor, critic = Actor(config=cfg).eval(), Critic(config=cfg).eval()
    reference = copy.deepcopy(actor)
    with torch.no_grad():  # make the reference differ so KL is not zero
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reward_model = RewardModel(config=cfg).eval()
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    responses = [[20, 21, EOS], [22, 23, 24, 25, 26, EOS], [27]]  # the last one hit max length without EOS
    sequences, attention_mask, action_mask = build_rollout(prompts, responses)
    A = action_mask.size(1)
    with torch.no_grad():
        log_probs = log_probs_from_logits(actor(sequences, attention_mask, A), sequences[:, -A:]) * action_mask
    rollout = Rollout(sequences, attention_mask, action_mask, log_probs)
    maker = ExperienceMaker(actor, critic, reward_model, reference, kl_estimator="k1", gamma=1.0, lam=0.95,
                            whiten_advantages=False)
    exp = maker.make_experience(rollout, kl_coef=0.3)

    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = torch.tensor([p + r])
        mask = torch.ones_like(seq)
        n = len(r)
        with torch.no_grad():
            lp = log_probs_from_logits(actor(seq, mask, n), seq[:, -n:])
            ref = log_probs_from_logits(reference(seq, mask, n), seq[:, -n:])
            values = critic(seq, mask, n)
            score = reward_model(seq, mask)
        assert_close(exp.log_probs[i, :n], lp[0], atol=1e-5, rtol=1e-4)
        assert_close(exp.values[i, :n], values[0], atol=1e-5, rtol=1e-4)
        assert_close(exp.scores[i], score[0], atol=1e-5, rtol=1e-4)
        kl = compute_kl(lp, ref)
        rewards = compute_rewards(score, kl, torch.ones(1, n), kl_coef=0.3)
        advantages, returns = compute_gae(values, rewards, torch.ones(1, n), 1.0, 0.95)
        assert_close(exp.advantages[i, :n], advantages[0], atol=1e-4, rtol=1e-4)
        assert_close(exp.returns[i, :n], returns[0], atol=1e-4, rtol=1e-4)
        assert_close(exp.kl[i], kl.sum(), atol=1e-5, rtol=1e-4)
        # Padding positions are exactly zero.
        for name in ("log_probs", "values", "advantages", "returns"):
            assert torch.all(getattr(exp, name)[i, n:] == 0), name


def test_lora_reference_is_the_base_model():
    """With LoRA, reference log-probs come from the actor's own base weights (adapters off)."""
    torch.manual_seed(0)
    cfg = tiny_config("gpt2")
    base = Actor(config=cfg).eval()
    actor = Actor(copy.deepcopy(base.model), lora_rank=4).eval()
    with torch.no_grad():  # move the adapters away from their zero init
        for name, p in actor.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    critic, reward_model = Critic(config=cfg).eval(), RewardModel(config=cfg).eval()
    sequences, attention_mask, action_mask = build_rollout([[5, 6, 7], [8, 9]], [[10, 11, EOS], [12]])
    rollout = Rollout(sequences, attention_mask, action_mask, torch.zeros(action_mask.shape))
    shared = ExperienceMaker(actor, critic, reward_model, reference_context=actor.reference)
    separate = ExperienceMaker(actor, critic, reward_model, reference_model=base)
    assert_close(shared.reference_log_probs(rollout), separate.reference_log_probs(rollout))
    with torch.no_grad():
        adapted = log_probs_from_logits(actor(sequences, attention_mask, 3), sequences[:, -3:]) * action_mask
    assert not torch.allclose(adapted, shared.reference_log_probs(rollout))
