"""The RLHF math on hand-built tensors: expected values are formulas, plus property checks."""

import math

import pytest
import torch
from torch.testing import assert_close

from minichatgpt import functional as F_


def reference_gae(values, rewards, mask, gamma, lam):
    """Plain per-row reverse loop over each response's real tokens (arXiv:1506.02438)."""
    advantages = torch.zeros_like(values)
    for b in range(values.size(0)):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1] if t + 1 < n else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            last = delta + gamma * lam * last
            advantages[b, t] = last
    return advantages, (advantages + values) * mask


def random_mask(B, A, generator):
    lengths = torch.randint(1, A + 1, (B,), generator=generator)
    return (torch.arange(A)[None] < lengths[:, None]).float()


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.5, 0.0)])
def test_gae_equals_reverse_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    values, rewards = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    mask = random_mask(5, 7, g)
    advantages, returns = F_.compute_gae(values, rewards, mask, gamma, lam)
    expected_adv, expected_ret = reference_gae(values, rewards, mask, gamma, lam)
    assert_close(advantages, expected_adv * mask)
    assert_close(returns, expected_ret)


def test_gae_with_gamma_lam_one_returns_reward_to_go():
    g = torch.Generator().manual_seed(1)
    values, rewards = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = random_mask(4, 6, g)
    _, returns = F_.compute_gae(values, rewards, mask, gamma=1.0, lam=1.0)
    reward_to_go = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1]) * mask
    assert_close(returns, reward_to_go)


def test_gae_ignores_padding_values_and_rewards():
    g = torch.Generator().manual_seed(2)
    values, rewards = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    garbage_values = values + (1 - mask) * 100.0
    garbage_rewards = rewards + (1 - mask) * -50.0
    assert_close(F_.compute_gae(values, rewards, mask), F_.compute_gae(garbage_values, garbage_rewards, mask))


def test_masked_mean_and_whiten_ignore_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 6.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1]])
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert_close(F_.masked_mean(x, mask), real.mean())
    assert_close(F_.masked_mean(x, mask, dim=1), torch.tensor([2.0, 5.0]))
    assert_close(F_.masked_var(x, mask), real.var())
    whitened = F_.masked_whiten(x, mask)
    assert_close(whitened[mask.bool()], (real - real.mean()) / torch.sqrt(real.var() + 1e-8))
    assert torch.all(whitened[~mask.bool()] == 0)
    # Changing masked entries changes nothing.
    x2 = x.clone()
    x2[~mask.bool()] = -1e4
    assert_close(F_.masked_whiten(x2, mask), whitened)


def test_log_probs_from_logits_equal_log_softmax_gather():
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(2, 5, 11, generator=g), torch.randint(0, 11, (2, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert_close(F_.log_probs_from_logits(logits, labels), expected)


def test_fused_log_probs_and_entropy_match_the_separate_computations():
    g = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(2, 5, 11, generator=g)).requires_grad_()
    labels = torch.randint(0, 11, (2, 5), generator=g)
    log_probs, entropy = F_.log_probs_and_entropy(logits, labels)
    assert_close(log_probs, F_.log_probs_from_logits(logits, labels))
    p = torch.softmax(logits.detach(), -1)
    assert_close(entropy, -(p * p.log()).sum(-1))
    assert not entropy.requires_grad
    log_probs.sum().backward()  # the gradient is that of the plain log-probs
    expected = torch.autograd.grad(F_.log_probs_from_logits(logits, labels).sum(), logits)[0]
    assert_close(logits.grad, expected)


def test_entropy_of_uniform_is_log_vocab():
    assert_close(F_.entropy_from_logits(torch.zeros(3, 8)), torch.full((3,), math.log(8)))


def test_kl_sign_is_policy_minus_reference():
    log_probs = torch.log(torch.tensor([[0.5, 0.2]]))
    ref_log_probs = torch.log(torch.tensor([[0.25, 0.4]]))
    assert_close(F_.compute_kl(log_probs, ref_log_probs, "k1"), torch.log(torch.tensor([[2.0, 0.5]])))
    ratio = torch.exp(ref_log_probs - log_probs)  # r = q / p
    assert_close(F_.compute_kl(log_probs, ref_log_probs, "k3"), (ratio - 1) - torch.log(ratio))
    assert torch.all(F_.compute_kl(log_probs, ref_log_probs, "k3") >= 0)
    with pytest.raises(ValueError, match="k2"):
        F_.compute_kl(log_probs, ref_log_probs, "k2")


def test_rewards_put_score_on_last_real_token_only():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    scores = torch.tensor([2.0, -3.0])
    rewards = F_.compute_rewards(scores, kl, mask, kl_coef=0.5)
    expected = -0.5 * kl * mask
    expected[0, 1] += 2.0
    expected[1, 3] += -3.0
    assert_close(rewards, expected)
    clipped = F_.compute_rewards(scores, kl, mask, kl_coef=0.5, score_clip=1.0)
    assert_close(clipped[0, 1], torch.tensor(-0.5 * 0.2 + 1.0))
    assert_close(clipped[1, 3], torch.tensor(-0.5 * 0.8 - 1.0))


def test_last_token_index_for_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    assert F_.last_token_index(right).tolist() == [2, 4]
    assert F_.last_token_index(left).tolist() == [4, 3]


def test_policy_loss_with_ratio_one_is_minus_mean_advantage():
    advantages = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    log_probs = torch.log(torch.tensor([[0.3, 0.2, 0.1], [0.4, 0.6, 0.5]]))
    out = F_.policy_loss(log_probs, log_probs.clone(), advantages, mask, clip_eps=0.2)
    assert_close(out.loss, torch.tensor(-(1.0 - 2.0 + 3.0 + 0.5 + 0.0) / 5))
    assert out.clip_frac == 0 and abs(float(out.approx_kl)) < 1e-7


@pytest.mark.parametrize("ratio,advantage,clipped", [
    (1.1, 1.0, False), (1.3, 1.0, True), (1.3, -1.0, False), (0.7, -1.0, True), (0.7, 1.0, False), (0.9, -1.0, False),
])
def test_policy_clipping_activates_exactly_outside_the_trust_region(ratio, advantage, clipped):
    old = torch.zeros(1, 1)
    new = torch.log(torch.tensor([[ratio]])).requires_grad_()
    out = F_.policy_loss(new, old, torch.tensor([[advantage]]), torch.ones(1, 1), clip_eps=0.2)
    bounded = min(max(ratio, 0.8), 1.2)
    assert_close(out.loss, torch.tensor(-min(ratio * advantage, bounded * advantage)))
    out.loss.backward()
    assert (new.grad.abs().item() == 0) == clipped  # a clipped token contributes no gradient
    assert float(out.clip_frac) == float(clipped)


def test_value_loss_clipping():
    old_values = torch.tensor([[0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.1, -0.5]])
    returns = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    out = F_.value_loss(values, old_values, returns, mask, value_clip_eps=0.2)
    clipped = old_values + (values - old_values).clamp(-0.2, 0.2)
    expected = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()
    assert_close(out.loss, expected)
    assert_close(out.clip_frac, torch.tensor(2 / 3))  # tokens 0 and 2 moved more than 0.2 toward the return
    unclipped = F_.value_loss(values, old_values, returns, mask, value_clip_eps=None)
    assert_close(unclipped.loss, 0.5 * ((values - returns) ** 2).mean())


def test_losses_ignore_masked_positions():
    g = torch.Generator().manual_seed(4)
    a, b, c, d = (torch.randn(3, 4, generator=g) for _ in range(4))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    noisy = [t + (1 - mask) * 37.0 for t in (a, b, c, d)]
    assert_close(F_.policy_loss(a, b, c, mask).loss, F_.policy_loss(*noisy[:3], mask).loss)
    assert_close(F_.value_loss(a, b, c, mask).loss, F_.value_loss(*noisy[:3], mask).loss)


def test_pairwise_losses_equal_their_formulas():
    chosen, rejected = torch.tensor([1.0, -0.5, 3.0]), torch.tensor([0.0, 0.5, -1.0])
    log_sig = -torch.log(torch.sigmoid(chosen - rejected)).mean()
    log_exp = torch.log(1 + torch.exp(rejected - chosen)).mean()
    assert_close(F_.pairwise_loss(chosen, rejected, "log_sig"), log_sig)
    assert_close(F_.pairwise_loss(chosen, rejected, "log_exp"), log_exp)
    with pytest.raises(ValueError, match="hinge"):
        F_.pairwise_loss(chosen, rejected, "hinge")


def test_lm_loss_skips_ignored_labels():
    g = torch.Generator().manual_seed(5)
    logits, ids = torch.randn(1, 4, 6, generator=g), torch.tensor([[1, 2, 3, 4]])
    labels = ids.clone()
    labels[0, :2] = F_.IGNORE_INDEX  # only tokens 2 and 3 count, predicted from positions 1 and 2
    log_p = torch.log_softmax(logits, -1)
    expected = -(log_p[0, 1, 3] + log_p[0, 2, 4]) / 2
    assert_close(F_.lm_loss(logits, labels), expected)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert_close(F_.explained_variance(returns, returns, mask), torch.tensor(1.0))
    assert_close(F_.explained_variance(torch.full_like(returns, 2.5), returns, mask), torch.tensor(0.0))
