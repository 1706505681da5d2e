"""Confidence intervals, win/tie/loss rates and the length-controlled win rate against their formulas."""

import math

import pytest
import torch

from minichatgpt.evaluation.stats import (Z_95, fit_logistic, length_controlled_win_rate, length_feature,
                                          mean_and_stderr, wilson_interval, win_rate_summary)


@pytest.mark.parametrize("k,n", [(7, 10), (0, 5), (5, 5), (37.5, 80)])
def test_wilson_interval_matches_its_formula(k, n):
    z, p = Z_95, k / n
    center = (p + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * math.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(max(0.0, center - half)) and high == pytest.approx(min(1.0, center + half))
    assert low <= p <= high


def test_wilson_interval_narrows_with_more_trials_and_is_symmetric():
    small, large = wilson_interval(6, 10), wilson_interval(600, 1000)
    assert large[1] - large[0] < small[1] - small[0]
    low, high = wilson_interval(3, 10)
    assert wilson_interval(7, 10) == pytest.approx((1 - high, 1 - low))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_summary_counts_and_intervals():
    outcomes = torch.tensor([1, 1, 1, 0.5, 0, 1, 0.5, 0], dtype=torch.float64)
    s = win_rate_summary(outcomes)
    assert (s["count"], s["win_rate"], s["tie_rate"], s["loss_rate"]) == (8, 4 / 8, 2 / 8, 2 / 8)
    assert s["win_rate_ties_half"] == (4 + 2 / 2) / 8
    assert s["win_rate_ci"] == pytest.approx(list(wilson_interval(4, 8)))
    assert s["win_rate_ties_half_ci"] == pytest.approx(list(wilson_interval(5, 8)))


def test_logistic_fit_recovers_the_parameters_of_soft_labels():
    """With y = sigmoid(a + b x) exactly (soft labels), the maximum-likelihood fit is (a, b)."""
    x = torch.linspace(-1, 1, 41, dtype=torch.float64)
    a, b = 0.4, -1.3
    fitted = fit_logistic(x, torch.sigmoid(a + b * x), l2=0.0)
    assert fitted == pytest.approx((a, b), abs=1e-8)


def test_length_controlled_win_rate_removes_a_length_effect():
    """A judge that only rewards length: the policy is mostly longer, so it wins more often than not, but
    at zero length difference it would win half the time."""
    diffs = torch.tensor([30.0] * 30 + [-10.0] * 10 + [5.0] * 10)
    outcomes = torch.sigmoid(2.0 * length_feature(diffs))  # P(win) depends on the length only (a = 0)
    raw = float(outcomes.mean())
    lc = length_controlled_win_rate(outcomes, diffs, l2=0.0)
    assert raw > 0.6
    assert lc["lc_win_rate"] == pytest.approx(0.5, abs=1e-8) and lc["slope"] == pytest.approx(2.0, abs=1e-6)


def test_length_controlled_win_rate_equals_the_raw_rate_without_a_length_effect():
    diffs = torch.tensor([12.0, -3.0, 40.0, 0.0, -25.0, 7.0])
    outcomes = torch.full((6,), 0.7, dtype=torch.float64)
    lc = length_controlled_win_rate(outcomes, diffs, l2=0.0)
    assert lc["lc_win_rate"] == pytest.approx(0.7, abs=1e-8) and lc["slope"] == pytest.approx(0.0, abs=1e-8)


def test_length_controlled_win_rate_stays_finite_on_separable_outcomes():
    diffs = torch.tensor([10.0, 20.0, -5.0, -15.0])
    outcomes = (diffs > 0).double()  # separable: plain maximum likelihood has no finite optimum
    lc = length_controlled_win_rate(outcomes, diffs)
    assert math.isfinite(lc["slope"]) and lc["slope"] > 0 and 0 < lc["lc_win_rate"] < 1


def test_length_feature_is_a_bounded_standardized_difference():
    d = torch.tensor([1.0, -2.0, 3.0])
    torch.testing.assert_close(length_feature(d), torch.tanh(d.double() / d.double().std(unbiased=False)))
    assert torch.equal(length_feature(torch.full((3,), 4.0)), torch.zeros(3, dtype=torch.float64))


def test_mean_and_stderr():
    values = torch.tensor([1.0, 2.0, 4.0, 9.0])
    mean, stderr = mean_and_stderr(values)
    assert mean == pytest.approx(4.0) and stderr == pytest.approx(float(values.std()) / 2)
