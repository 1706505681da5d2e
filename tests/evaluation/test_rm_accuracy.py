"""Reward-model accuracy on files with known answers, overall and per subset."""

import json

import pytest
import torch
import torch.nn as nn

from minichatgpt.data import DataError
from minichatgpt.evaluation import reward_model_accuracy
from minichatgpt.evaluation.stats import wilson_interval


class LengthRewardModel(nn.Module):
    """Scores a sequence by its number of real tokens: the known function of these tests."""

    def forward(self, sequences, attention_mask):
        return attention_mask.sum(-1).float()


# (chosen words, rejected words, subset): the chosen side is longer in 3 of the 4 "easy" pairs and in
# 1 of the 2 "hard" ones; a pair of equal lengths counts as wrong (strictly higher is correct).
PAIRS = [(3, 1, "easy"), (4, 2, "easy"), (2, 5, "easy"), (5, 1, "easy"), (1, 2, "hard"), (3, 3, "hard")]


def write_rewardbench_file(path):
    """RewardBench's columns (prompt, chosen, rejected, subset, id) as JSON lines or Parquet."""
    rows = [{"prompt": f"describe the cat {i}", "chosen": " ".join(["sweet"] * c), "rejected": " ".join(["sweet"] * r),
             "subset": subset, "id": i} for i, (c, r, subset) in enumerate(PAIRS)]
    if str(path).endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    else:
        with open(path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_accuracy_and_margin_overall_and_per_subset(tmp_path, word_tokenizer, suffix):
    path = write_rewardbench_file(tmp_path / f"rewardbench{suffix}")
    result = reward_model_accuracy(LengthRewardModel(), word_tokenizer, path, batch_size=4)
    expected = {"all": PAIRS, "easy": PAIRS[:4], "hard": PAIRS[4:]}
    assert list(result) == ["all", "easy", "hard"]
    for name, pairs in expected.items():
        correct = sum(c > r for c, r, _ in pairs)
        assert result[name]["count"] == len(pairs)
        assert result[name]["accuracy"] == correct / len(pairs)
        assert result[name]["accuracy_ci"] == pytest.approx(list(wilson_interval(correct, len(pairs))))
        # Both sides share the prompt and the EOS: the score difference is the word difference.
        assert result[name]["margin"] == pytest.approx(sum(c - r for c, r, _ in pairs) / len(pairs))


def test_other_preference_formats_and_no_subset_column(tmp_path, word_tokenizer):
    records = [{"conversations": [{"from": "human", "value": "describe the dog"}],
                "chosen": {"from": "gpt", "value": "sweet sweet"}, "rejected": {"from": "gpt", "value": "sweet"}},
               {"chosen": "\n\nHuman: describe the dog\n\nAssistant: sweet",
                "rejected": "\n\nHuman: describe the dog\n\nAssistant: sweet sweet sweet"},
               {"instruction": "describe the cake", "input": "", "chosen": "a b c", "rejected": "a"}]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    result = reward_model_accuracy(LengthRewardModel(), word_tokenizer, str(path))
    assert list(result) == ["all"]
    assert result["all"]["accuracy"] == pytest.approx(2 / 3)
    assert result["all"]["margin"] == pytest.approx((1 - 2 + 2) / 3)


def test_a_real_reward_model_is_scored_as_in_training(eval_model_dirs, eval_tokenizer, tmp_path):
    from minichatgpt.data import PreferenceCollator, PreferenceDataset
    from minichatgpt.nn import RewardModel
    from minichatgpt.trainer.rm import evaluate_pairs

    path = write_rewardbench_file(tmp_path / "pairs.jsonl")
    rm = RewardModel(pretrained=eval_model_dirs["rm"]).eval()
    result = reward_model_accuracy(rm, eval_tokenizer, path, batch_size=2)
    loader = torch.utils.data.DataLoader(PreferenceDataset(path, eval_tokenizer), batch_size=6,
                                         collate_fn=PreferenceCollator(eval_tokenizer.pad_token_id))
    sums = evaluate_pairs(rm, loader, "cpu")
    assert result["all"]["accuracy"] == sums["correct"] / sums["count"]
    assert result["all"]["margin"] == pytest.approx(sums["margin"] / sums["count"], abs=1e-5)


def test_a_bad_row_is_named(tmp_path, word_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing field 'rejected'"):
        reward_model_accuracy(LengthRewardModel(), word_tokenizer, str(path))
