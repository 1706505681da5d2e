"""The one token sampler (rollouts, evaluation, serving) against Hugging Face's logits warpers."""

import pytest
import torch
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from minichatgpt.nn.generation import sample_tokens


def kept_by_hf(logits, temperature, top_k, top_p):
    """The tokens Hugging Face's warpers leave a non-zero probability, per row."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    return torch.isfinite(warpers(torch.zeros(logits.size(0), 1, dtype=torch.long), logits.clone()))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 0.5), (0.7, 5, 1.0), (1.3, 8, 0.8), (1.0, 3, 0.2)])
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
