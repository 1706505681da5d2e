"""RunningMoments: the merged statistics equal the population mean and variance of every score seen."""

import itertools

import pytest
import torch
from torch.testing import assert_close

from minichatgpt.experience import RunningMoments
from minichatgpt.trainer.strategies.utils import load_object, save_object


def batches(offset: float = 0.0, sizes=(5, 1, 12, 7)):
    """Scores in batches of unequal size, centred on ``offset`` with spread of about 2."""
    generator = torch.Generator().manual_seed(0)
    return [offset + 2.0 * torch.randn(n, generator=generator) for n in sizes]


def fed(chunks) -> RunningMoments:
    moments = RunningMoments()
    for chunk in chunks:
        moments.update(chunk)
    return moments


def assert_moments_of(moments: RunningMoments, chunks, rtol=1e-9):
    seen = torch.cat([c.flatten() for c in chunks]).double()
    mean, var = seen.mean(), ((seen - seen.mean()) ** 2).mean()  # population variance
    assert moments.count == seen.numel()
    assert_close(torch.tensor(moments.mean, dtype=torch.float64), mean, rtol=rtol, atol=rtol * float(var) ** 0.5)
    assert_close(torch.tensor(moments.var, dtype=torch.float64), var, rtol=rtol, atol=0.0)


def test_starts_as_the_identity_normalization():
    moments, x = RunningMoments(eps=0.0), torch.tensor([-1.5, 0.0, 3.0])
    assert (moments.mean, moments.var, moments.count) == (0.0, 1.0, 0)
    assert torch.equal(moments.normalize(x), x)


def test_one_batch_gives_that_batch_mean_and_population_variance():
    (x,) = batches(sizes=(9,))
    assert_moments_of(fed([x]), [x], rtol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4])
def test_merged_batches_equal_the_statistics_of_all_values(offset):
    # Scores far from zero are where E[x^2] - E[x]^2 cancels: summed in float32 it lost the variance.
    chunks = batches(offset)
    assert_moments_of(fed(chunks), chunks, rtol=1e-6)


def test_the_order_of_batches_does_not_matter():
    chunks = batches(offset=3.0)
    reference = fed(chunks)
    for order in itertools.permutations(chunks):
        moments = fed(order)
        assert moments.count == reference.count
        assert moments.mean == pytest.approx(reference.mean, rel=1e-12, abs=1e-12)
        assert moments.var == pytest.approx(reference.var, rel=1e-12)


def test_batches_of_any_shape_count_every_element():
    chunks = [torch.arange(6.0).view(2, 3), torch.tensor([[10.0]])]
    assert_moments_of(fed(chunks), chunks)


def test_normalize_is_the_standard_score_of_the_running_statistics():
    chunks, eps = batches(offset=-4.0), 1e-3
    moments = RunningMoments(eps=eps)
    for chunk in chunks:
        moments.update(chunk)
    x = torch.tensor([-4.0, 0.0, 2.5])
    assert_close(moments.normalize(x), (x - moments.mean) / (moments.var + eps) ** 0.5)
    # Everything seen, normalized, has mean 0 and variance var / (var + eps).
    z = moments.normalize(torch.cat(chunks)).double()
    assert_close(z.mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-5, rtol=0)
    assert_close(z.var(unbiased=False), torch.tensor(moments.var / (moments.var + eps), dtype=torch.float64),
                 atol=1e-5, rtol=1e-5)


def test_constant_scores_have_zero_variance_and_normalize_to_zero():
    moments = fed([torch.full((4,), 7.0), torch.full((3,), 7.0)])
    assert (moments.mean, moments.var, moments.count) == (7.0, 0.0, 7)
    assert torch.equal(moments.normalize(torch.full((2,), 7.0)), torch.zeros(2))


def test_state_round_trips_and_the_run_continues_identically(tmp_path):
    first, rest = batches(sizes=(4, 6)), batches(offset=1.0, sizes=(3, 8))
    uninterrupted, before = fed(first + rest), fed(first)
    # The fields a PPO checkpoint stores (trainer/ppo_state.py), through a weights_only file.
    save_object({"mean": before.mean, "var": before.var, "count": before.count}, str(tmp_path / "moments.pt"))
    state = load_object(str(tmp_path / "moments.pt"))
    resumed = RunningMoments()
    resumed.mean, resumed.var, resumed.count = state["mean"], state["var"], state["count"]
    for chunk in rest:
        resumed.update(chunk)
    assert (resumed.mean, resumed.var, resumed.count) == (uninterrupted.mean, uninterrupted.var, uninterrupted.count)
