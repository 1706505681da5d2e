"""Statistics of an evaluation: binomial confidence intervals, win/tie/loss rates, and a
length-controlled win rate. Pure functions on tensors and floats; results are JSON-ready dicts.

Outcomes of a pairwise comparison are coded 1 (the policy wins), 0.5 (tie) and 0 (the policy loses).
"""

import math
from typing import Dict, Tuple

import torch

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: float, n: int, z: float = Z_95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001).

    ``(p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = successes / n``. Unlike the
    normal (Wald) interval it stays inside [0, 1] and keeps its coverage near p = 0 or 1 and for small n.
    Returns (0, 1) when n is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, center - half), min(1.0, center + half)


def win_rate_summary(outcomes: torch.Tensor, z: float = Z_95) -> Dict[str, float]:
    """Win, tie and loss rates of (N,) outcomes in {1, 0.5, 0}, each with its Wilson interval.

    ``win_rate``, ``tie_rate`` and ``loss_rate`` are the three shares; ``win_rate_ties_half`` counts a tie
    as half a win, ``(wins + ties / 2) / N`` (the headline figure, 0.5 for equal policies); its interval is the Wilson
    interval of ``wins + ties / 2`` successes in N trials. A tie has less variance than a coin flip, so
    this interval is conservative (a little wider than needed) when there are ties.
    """
    n = outcomes.numel()
    wins, ties = float((outcomes == 1).sum()), float((outcomes == 0.5).sum())
    losses = n - wins - ties
    summary: Dict[str, float] = {"count": n}
    for key, k in (("win_rate", wins), ("tie_rate", ties), ("loss_rate", losses),
                   ("win_rate_ties_half", wins + ties / 2)):
        summary[key] = k / n if n else float("nan")
        summary[f"{key}_ci"] = list(wilson_interval(k, n, z))
    return summary


def length_feature(length_diffs: torch.Tensor) -> torch.Tensor:
    """``tanh(d / std(d))`` of (N,) length differences (policy minus baseline), as AlpacaEval-LC uses:
    standardized, and bounded so that a few very long answers do not dominate the fit. All zeros when
    the differences do not vary."""
    d = length_diffs.double()
    scale = d.std(unbiased=False) if d.numel() > 1 else d.new_zeros(())
    return torch.tanh(d / scale) if scale > 0 else torch.zeros_like(d)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, iterations: int = 100) -> Tuple[float, float]:
    """Intercept a and slope b minimizing ``sum BCE(sigmoid(a + b x), y) + l2 / 2 (a^2 + b^2)``.

    Newton's method (the loss is convex); ``y`` may hold soft labels in [0, 1] (a tie is 0.5). The small
    ``l2`` keeps the fit finite when outcomes are perfectly separated by ``x``; ``l2=0`` is the plain
    maximum-likelihood fit.
    """
    x, y = x.double(), y.double()
    features = torch.stack([torch.ones_like(x), x], dim=1)  # (N, 2)
    theta = torch.zeros(2, dtype=torch.float64)
    ridge = l2 * torch.eye(2, dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(features @ theta)  # (N,)
        gradient = features.T @ (p - y) + l2 * theta
        hessian = features.T @ (features * (p * (1 - p)).unsqueeze(1)) + ridge
        step = torch.linalg.lstsq(hessian + 1e-12 * torch.eye(2, dtype=torch.float64), gradient).solution
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def length_controlled_win_rate(outcomes: torch.Tensor, length_diffs: torch.Tensor, l2: float = 1e-2) -> Dict[str, float]:
    """Win rate with the length difference regressed out (in the spirit of AlpacaEval-LC, Dubois et al.
    2024, arXiv:2404.04475).

    Fits ``P(win) = sigmoid(a + b * tanh(d / std(d)))`` to the outcomes (ties as 0.5) by logistic
    regression, d being the policy's response length minus the baseline's, and reports the prediction
    at d = 0, ``sigmoid(a)``: the win rate the policy would have if it answered exactly as long as the
    baseline. ``slope`` b > 0 means the judge rewards length.
    """
    a, b = fit_logistic(length_feature(length_diffs), outcomes.double(), l2=l2)
    return {"lc_win_rate": 1 / (1 + math.exp(-a)), "intercept": a, "slope": b}


def mean_and_stderr(values: torch.Tensor) -> Tuple[float, float]:
    """Mean of (N,) values and its standard error ``std / sqrt(N)`` (0 for a single value)."""
    values = values.double()
    n = values.numel()
    if n == 0:
        return float("nan"), float("nan")
    stderr = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return float(values.mean()), stderr
