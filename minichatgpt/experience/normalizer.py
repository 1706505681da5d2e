"""Running normalization of reward-model scores across rollouts (and ranks)."""

import torch


class RunningMoments:
    """Mean and standard deviation of every score seen so far, merged batch by batch (Chan et al.)."""

    def __init__(self, eps: float = 1e-8):
        self.mean, self.var, self.count, self.eps = 0.0, 1.0, 0, eps

    def update(self, x: torch.Tensor) -> None:
        """Merge a batch of scores; under torch.distributed, the statistics of all ranks' batches."""
        # float64: E[x^2] - E[x]^2 cancels catastrophically in float32 for scores far from zero.
        x = x.detach().double()
        stats = torch.stack([x.sum(), (x ** 2).sum(), torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device)])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        total, total_sq, n = stats.tolist()
        batch_mean = total / n
        batch_var = max(total_sq / n - batch_mean ** 2, 0.0)
        delta, new_count = batch_mean - self.mean, self.count + n
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / new_count) / new_count
        self.mean += delta * n / new_count
        self.count = new_count

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.var + self.eps) ** 0.5
