"""The one token sampler (rollouts, evaluation, serving) against Hugging Face's logits warpers."""

import pytest
import torch
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from minichatgpt.nn.generation import draw, sample_tokens


def kept_by_hf(logits, temperature, top_k, top_p):
    """The tokens Hugging Face's warpers leave a non-zero probability, per row."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    return torch.isfinite(warpers(torch.zeros(logits.size(0), 1, dtype=torch.long), logits.clone()))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.8, 0, 1.0), (1.0, 0, 0.5), (0.7, 5, 1.0),
                                                      (1.3, 8, 0.8), (1.0, 3, 0.2)])
def test_samples_only_what_the_warpers_keep_with_their_probabilities(temperature, top_k, top_p):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, generator=generator) * 2
    kept = kept_by_hf(logits, temperature, top_k, top_p)  # (3, 40)
    draws = torch.stack([sample_tokens(logits, temperature, top_k, top_p, generator) for _ in range(4000)])  # (N, 3)
    for row in range(3):
        counts = torch.bincount(draws[:, row], minlength=40).float()
        assert set(torch.nonzero(counts).flatten().tolist()) <= set(torch.nonzero(kept[row]).flatten().tolist())
        expected = torch.softmax(logits[row] / temperature, -1) * kept[row]
        expected = expected / expected.sum()
        assert torch.allclose(counts / counts.sum(), expected, atol=0.03)  # about 4 standard errors at N=4000


def test_greedy_edges_and_the_top_token_always_stays():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample_tokens(logits, temperature=1e-45).tolist() == [1, 0]  # would overflow: greedy
    assert sample_tokens(logits, top_p=1e-46).tolist() == [1, 0]  # 0 in float32: the top token only
    assert sample_tokens(logits, top_k=1).tolist() == [1, 0]


def test_draw_follows_the_weights_and_never_picks_a_zero_weight_index():
    """Inverse-CDF draws over a 49,152-token vocabulary (SmolLM2's): unnormalized rows, zero weights at the
    ends and in the middle, a spike; frequencies within 4 standard errors of weight / sum."""
    generator = torch.Generator().manual_seed(1)
    weights = torch.zeros(3, 49152)
    weights[0, 10:20] = torch.arange(1.0, 11.0)  # unnormalized, zeros around
    weights[1, [0, 49151]] = torch.tensor([0.25, 0.75])  # the first and last index only
    weights[2] = torch.rand(49152, generator=generator) * 1e-6
    weights[2, 777] = 1.0  # a spike holding ~97% of the mass
    n = 20000
    draws = torch.stack([draw(weights, generator) for _ in range(n)])  # (n, 3)
    for row in range(3):
        counts = torch.bincount(draws[:, row], minlength=49152).double()
        assert (counts[weights[row] == 0] == 0).all()
        p = weights[row].double() / weights[row].double().sum()
        hot = p > 0.01
        stderr = (p[hot] * (1 - p[hot]) / n).sqrt()
        assert ((counts[hot] / n - p[hot]).abs() <= 4 * stderr).all(), row
