"""Preference losses and critic-free advantages on hand-built tensors: expected values are the papers'
formulas written out, or plain loops, plus property checks."""

import math

import pytest
import torch
from torch.testing import assert_close

from minichatgpt import functional_rl as R


def random_mask(B, A, generator):
    lengths = torch.randint(1, A + 1, (B,), generator=generator)
    return (torch.arange(A)[None] < lengths[:, None]).float()


def sigmoid_log(x):
    return math.log(1.0 / (1.0 + math.exp(-x)))


def test_sequence_log_probs_sums_response_tokens_only():
    g = torch.Generator().manual_seed(0)
    log_probs, mask = -torch.rand(4, 6, generator=g), random_mask(4, 6, g)
    expected = torch.tensor([sum(float(log_probs[b, t]) for t in range(6) if mask[b, t]) for b in range(4)])
    assert_close(R.sequence_log_probs(log_probs, mask), expected)
    garbage = log_probs + 100.0 * (1 - mask)  # masked positions don't change the result
    assert_close(R.sequence_log_probs(garbage, mask), expected)


def test_dpo_loss_formula_and_rewards():
    pc, pr, rc, rr = torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -4.0]), torch.tensor([-2.5, -2.0]), \
        torch.tensor([-2.0, -3.0])
    beta = 0.5
    out = R.dpo_loss(pc, pr, rc, rr, beta)
    hs = [(-3.0 + 2.5) - (-2.0 + 2.0), (-1.0 + 2.0) - (-4.0 + 3.0)]
    assert_close(out.loss, torch.tensor(sum(-sigmoid_log(beta * h) for h in hs) / 2))
    assert_close(out.chosen_rewards, beta * (pc - rc))
    assert_close(out.rejected_rewards, beta * (pr - rr))
    assert_close(out.chosen_rewards - out.rejected_rewards, beta * torch.tensor(hs))  # the margin metric


def test_dpo_loss_is_log2_at_zero_margin():
    x = torch.tensor([-3.0, -7.0, -1.5])
    for eps in (0.0, 0.2):
        assert_close(R.dpo_loss(x, x + 1.0, x, x + 1.0, beta=0.3, label_smoothing=eps).loss,
                     torch.tensor(math.log(2.0)))


def test_dpo_label_smoothing():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(5, generator=g) for _ in range(4))
    assert_close(R.dpo_loss(pc, pr, rc, rr, 0.2, 0.0).loss, R.dpo_loss(pc, pr, rc, rr, 0.2).loss)
    eps, beta = 0.1, 0.2
    h = (pc - rc) - (pr - rr)
    expected = sum(-(1 - eps) * sigmoid_log(beta * float(v)) - eps * sigmoid_log(-beta * float(v)) for v in h) / 5
    assert_close(R.dpo_loss(pc, pr, rc, rr, beta, eps).loss, torch.tensor(expected))


def test_ipo_formula_and_minimum():
    tau = 0.25
    pc, pr, rc, rr = torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-2.5]), torch.tensor([-2.0])
    h = (-2.0 + 2.5) - (-3.0 + 2.0)
    assert_close(R.ipo_loss(pc, pr, rc, rr, tau).loss, torch.tensor((h - 1 / (2 * tau)) ** 2))
    # The minimum (zero loss, zero gradient) sits at h = 1/(2 tau).
    pc = torch.tensor([1.0 / (2 * tau)], requires_grad=True)
    loss = R.ipo_loss(pc, torch.zeros(1), torch.zeros(1), torch.zeros(1), tau).loss
    loss.backward()
    assert_close(loss.detach(), torch.tensor(0.0))
    assert_close(pc.grad, torch.zeros(1))


def test_simpo_length_normalization():
    beta, gamma = 2.0, 0.5
    pc, pr = torch.tensor([-6.0, -2.0]), torch.tensor([-4.0, -9.0])
    lc, lr = torch.tensor([3, 1]), torch.tensor([2, 3])
    out = R.simpo_loss(pc, pr, lc, lr, beta, gamma)
    margins = [beta * -6 / 3 - beta * -4 / 2 - gamma, beta * -2 / 1 - beta * -9 / 3 - gamma]
    assert_close(out.loss, torch.tensor(sum(-sigmoid_log(m) for m in margins) / 2))
    # Doubling a response and its log-prob leaves the per-token reward, hence the loss, unchanged.
    assert_close(R.simpo_loss(2 * pc, pr, 2 * lc, lr, beta, gamma).loss, out.loss)


def test_grpo_advantages_formula_and_zero_mean():
    g = torch.Generator().manual_seed(2)
    scores, G = torch.randn(12, generator=g), 4
    adv = R.group_advantages(scores, G, eps=1e-4)
    for k in range(3):
        group = [float(s) for s in scores[k * G:(k + 1) * G]]
        mean = sum(group) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1))
        assert_close(adv[k * G:(k + 1) * G], torch.tensor([(r - mean) / (std + 1e-4) for r in group]))
    assert_close(adv.view(3, G).sum(-1), torch.zeros(3), atol=1e-5, rtol=0)
    dr = R.group_advantages(scores, G, scale=False)  # Dr. GRPO: centred only
    assert_close(dr, (scores.view(3, G) - scores.view(3, G).mean(-1, keepdim=True)).view(-1))
    assert_close(R.group_advantages(torch.ones(4), 4), torch.zeros(4))  # equal rewards teach nothing


def test_rloo_equals_leave_one_out_loop():
    g = torch.Generator().manual_seed(3)
    scores, G = torch.randn(10, generator=g), 5
    expected = []
    for i in range(10):
        start = i // G * G
        others = [float(scores[j]) for j in range(start, start + G) if j != i]
        expected.append(float(scores[i]) - sum(others) / len(others))
    assert_close(R.rloo_advantages(scores, G), torch.tensor(expected))


def test_groups_must_divide_the_batch():
    with pytest.raises(ValueError, match="groups"):
        R.rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="groups"):
        R.group_advantages(torch.zeros(3), 1)


def test_reinforce_pp_returns_and_whitening():
    g = torch.Generator().manual_seed(4)
    B, A, kl_coef = 4, 6, 0.1
    scores, lp, ref = torch.randn(B, generator=g), -torch.rand(B, A, generator=g), -torch.rand(B, A, generator=g)
    mask = random_mask(B, A, g)
    advantages, returns = R.reinforce_pp_advantages(scores, lp, ref, mask, kl_coef)
    expected = torch.zeros(B, A)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):  # gamma = 1 reward-to-go of r_s = -kl_coef * k1_s (+ score at the last token)
            expected[b, t] = sum(-kl_coef * float(lp[b, s] - ref[b, s]) for s in range(t, n)) + float(scores[b])
    assert_close(returns, expected)
    real = expected[mask.bool()]
    assert_close(advantages[mask.bool()], (real - real.mean()) / torch.sqrt(real.var() + 1e-8))
    assert_close(advantages * (1 - mask), torch.zeros(B, A))
    # masked positions don't change a result
    noisy_advantages, _ = R.reinforce_pp_advantages(scores, lp + 5 * (1 - mask), ref, mask, kl_coef)
    assert_close(noisy_advantages, advantages)


def test_kl_loss_term_is_k3():
    lp, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -2.0, -0.1]])
    expected = torch.tensor([[math.exp(r - p) - (r - p) - 1 for p, r in zip(lp[0].tolist(), ref[0].tolist())]])
    assert_close(R.kl_loss_term(lp, ref), expected)
    assert bool((R.kl_loss_term(lp, ref) >= 0).all())


def test_aggregations():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert_close(R.aggregate_loss(x, mask, "token"), torch.tensor((1 + 2 + 3 + 4) / 4))
    assert_close(R.aggregate_loss(x, mask, "sequence"), torch.tensor(((1 + 2 + 3) / 3 + 4) / 2))
    assert_close(R.aggregate_loss(x, mask, "constant"), torch.tensor((1 + 2 + 3 + 4) / 6))
    for mode in R.AGGREGATIONS:  # masked positions don't change a result
        assert_close(R.aggregate_loss(x + 9 * (1 - mask), mask, mode), R.aggregate_loss(x, mask, mode))
    with pytest.raises(ValueError, match="aggregation"):
        R.aggregate_loss(x, mask, "mean")


def test_clipped_surrogate_ratio_one_is_minus_advantage():
    g = torch.Generator().manual_seed(5)
    lp, adv = -torch.rand(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert_close(R.clipped_surrogate(lp, lp, adv), -adv)
    # ratio 2 with positive advantage is clipped at 1 + eps
    out = R.clipped_surrogate(torch.tensor([[math.log(2.0)]]), torch.zeros(1, 1), torch.tensor([[1.0]]), 0.2)
    assert_close(out, torch.tensor([[-1.2]]))


def test_critic_free_advantages_per_algo():
    g = torch.Generator().manual_seed(6)
    B, A, G, kl_coef = 6, 5, 3, 0.2
    scores, lp, ref = torch.randn(B, generator=g), -torch.rand(B, A, generator=g), -torch.rand(B, A, generator=g)
    mask = random_mask(B, A, g)
    shaped = scores - kl_coef * ((lp - ref) * mask).sum(-1)  # sequence reward minus beta * summed k1
    expected = {"grpo": R.group_advantages(shaped, G), "dr_grpo": R.group_advantages(shaped, G, scale=False),
                "rloo": R.rloo_advantages(shaped, G)}
    for algo, per_sample in expected.items():
        out = R.critic_free_advantages(algo, scores, lp, ref, mask, G, kl_coef)
        assert_close(out, per_sample[:, None].expand(B, A) * mask)
    assert_close(R.critic_free_advantages("grpo", scores, lp, ref, mask, G, 0.0),
                 R.group_advantages(scores, G)[:, None] * mask)
    assert_close(R.critic_free_advantages("reinforce_pp", scores, lp, ref, mask, G, kl_coef),
                 R.reinforce_pp_advantages(scores, lp, ref, mask, kl_coef)[0])
    with pytest.raises(ValueError, match="algo"):
        R.critic_free_advantages("ppo", scores, lp, ref, mask, G)
