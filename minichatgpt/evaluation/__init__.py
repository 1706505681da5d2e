"""Measuring trained models: reward-model accuracy on held-out pairs, a policy's win rate against a
baseline by a judge (gold reward model or LLM), perplexity, and the report files.

``minichatgpt eval`` (``minichatgpt.recipes.eval``) is the command over these functions.
"""

from minichatgpt.evaluation.judges import (JUDGE_TEMPLATE, Judgement, LLMJudge, RewardModelJudge, judge_both_orders,
                                           outcomes_from_margins)
from minichatgpt.evaluation.perplexity import perplexity, sequence_nll
from minichatgpt.evaluation.report import markdown_report, plot_report, write_report
from minichatgpt.evaluation.rm_accuracy import accuracy_by_subset, reward_model_accuracy
from minichatgpt.evaluation.sampling import Samples, SamplingSettings, sample_responses, sequence_kl
from minichatgpt.evaluation.split import parse_parts, split_file, split_rows
from minichatgpt.evaluation.stats import (fit_logistic, length_controlled_win_rate, length_feature, wilson_interval,
                                          win_rate_summary)
from minichatgpt.evaluation.win_rate import Contestant, compare_policies, judge_samples, sample_baseline

__all__ = [
    "reward_model_accuracy", "accuracy_by_subset",
    "Contestant", "compare_policies", "judge_samples", "sample_baseline",
    "Samples", "SamplingSettings", "sample_responses", "sequence_kl",
    "RewardModelJudge", "LLMJudge", "Judgement", "JUDGE_TEMPLATE", "judge_both_orders", "outcomes_from_margins",
    "wilson_interval", "win_rate_summary", "length_controlled_win_rate", "length_feature", "fit_logistic",
    "perplexity", "sequence_nll", "split_file", "split_rows", "parse_parts",
    "write_report", "markdown_report", "plot_report",
]
