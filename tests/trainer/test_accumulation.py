"""Gradient accumulation: each optimizer step uses the mean gradient of the micro-batches in its group,
including a last group that is shorter than ``accumulation_steps``."""

from typing import List

import torch

from minichatgpt.trainer.strategies import NaiveStrategy
from minichatgpt.trainer.supervised import SupervisedTrainer


class Regression(SupervisedTrainer):
    """Mean squared error of a linear model; records the gradient at every optimizer step."""

    grads: List[torch.Tensor]

    def loss(self, batch):
        return ((self.model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean(), {}


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params, grads):
        super().__init__(params, lr=0.0)
        self.grads = grads

    def step(self, closure=None):
        self.grads.append(self.param_groups[0]["params"][0].grad.clone())
        return super().step(closure)


def test_incomplete_last_group_uses_the_mean_gradient_of_its_micro_batches():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    batches = [{"x": torch.randn(4, 3), "y": torch.randn(4)} for _ in range(5)]  # groups of 2: [0 1] [2 3] [4]
    grads = []
    trainer = Regression(model, NaiveStrategy("cpu"), RecordingSGD(model.parameters(), grads),
                         accumulation_steps=2, max_grad_norm=0.0, log_interval=100)
    trainer.fit(batches)

    def mean_gradient(group):
        model.zero_grad()
        torch.stack([((model(b["x"]).squeeze(-1) - b["y"]) ** 2).mean() for b in group]).mean().backward()
        return model.weight.grad.clone()

    assert len(grads) == 3
    for got, group in zip(grads, (batches[0:2], batches[2:4], batches[4:5])):
        torch.testing.assert_close(got, mean_gradient(group))
