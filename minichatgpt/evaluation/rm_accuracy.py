"""Reward-model accuracy on held-out preference pairs, overall and per subset.

A pair counts as correct when the chosen response scores strictly higher than the rejected one (as
during training, ``trainer.rm.evaluate_pairs``); the margin is ``score(chosen) - score(rejected)``.
Every file the reward-model reader (``PreferenceDataset``) takes works, so RewardBench's
``{"prompt", "chosen", "rejected", "subset"}`` rows load directly and are reported per ``subset``.
"""

from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import PreferenceCollator, PreferenceDataset
from ..data.readers import Source, load_rows
from ..nn import RewardModel
from ..trainer.rm import score_pairs
from ..trainer.utils import to_device
from .stats import wilson_interval

ALL = "all"


def pair_summary(chosen: torch.Tensor, rejected: torch.Tensor) -> Dict[str, float]:
    """Accuracy (chosen > rejected) with its Wilson interval, mean margin and count of (N,) score pairs."""
    n = chosen.numel()
    correct = float((chosen > rejected).sum())
    return {"count": n, "accuracy": correct / n if n else float("nan"),
            "accuracy_ci": list(wilson_interval(correct, n)),
            "margin": float((chosen - rejected).double().mean()) if n else float("nan")}


def accuracy_by_subset(chosen: torch.Tensor, rejected: torch.Tensor,
                       subsets: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    """``{"all": summary, subset: summary, ...}`` of (N,) chosen and rejected scores; ``subsets`` (N labels,
    or None) groups the pairs, in order of first appearance."""
    result = {ALL: pair_summary(chosen, rejected)}
    if subsets is not None:
        for name in dict.fromkeys(subsets):
            keep = torch.tensor([s == name for s in subsets], dtype=torch.bool)
            result[name] = pair_summary(chosen[keep], rejected[keep])
    return result


def subset_labels(source: Source, locations: Sequence[str], column: str) -> Optional[List[str]]:
    """The ``column`` value of the record at each location, or None when no record has that column."""
    records = dict(load_rows(source, on_invalid=lambda err: None))  # invalid rows were left out of the dataset too
    values = [records[where].get(column) for where in locations]
    if all(value is None for value in values):
        return None
    return ["(none)" if value is None else str(value) for value in values]


@torch.no_grad()
def score_preference_file(reward_model: RewardModel, tokenizer, source: Source, max_len: int = 512,
                          batch_size: int = 8, max_pairs: Optional[int] = None, skip_invalid: bool = False,
                          device: str = "cpu"):
    """Scores of every pair of a preference file: (chosen (N,), rejected (N,), the dataset)."""
    dataset = PreferenceDataset(source, tokenizer, max_len=max_len, max_datasets_size=max_pairs,
                                skip_invalid=skip_invalid)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=PreferenceCollator(tokenizer.pad_token_id))
    reward_model.eval()
    chosen, rejected = [], []
    for batch in tqdm(loader, desc="reward-model accuracy", leave=False):
        c, r = score_pairs(reward_model, to_device(batch, device), tokenizer.pad_token_id)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected), dataset


def reward_model_accuracy(reward_model: RewardModel, tokenizer, source: Source, subset_column: str = "subset",
                          **kwargs) -> Dict[str, Dict[str, float]]:
    """Accuracy, its 95% Wilson interval and the mean margin of ``reward_model`` on the pairs of ``source``,
    overall (``"all"``) and per value of ``subset_column`` when the records have it.

    Args:
        source: any preference source ``PreferenceDataset`` reads (a path, records, a dataset name).
        kwargs: ``max_len``, ``batch_size``, ``max_pairs``, ``skip_invalid``, ``device``
            (see ``score_preference_file``). Pairs truncated away by ``max_len`` are left out and
            counted in the result's ``truncated_away``.
    """
    chosen, rejected, dataset = score_preference_file(reward_model, tokenizer, source, **kwargs)
    subsets = subset_labels(source, dataset.locations, subset_column) if subset_column else None
    result = accuracy_by_subset(chosen, rejected, subsets)
    result[ALL]["truncated_away"] = dataset.num_truncated_away
    result[ALL]["invalid_skipped"] = dataset.num_invalid_skipped
    return result
