"""Policy against baseline on a prompt file: both answer every prompt, a judge picks, the statistics."""

from typing import Dict, List, NamedTuple, Optional

import torch

from ..data import PromptDataset
from ..nn import Actor
from .judges import Judgement, outcomes_from_margins
from .sampling import Samples, SamplingSettings, sample_responses
from .stats import length_controlled_win_rate, mean_and_stderr, win_rate_summary


class Contestant(NamedTuple):
    """A policy with its tokenizer and its encoded prompts (each model reads the prompts in its own format)."""

    actor: Actor
    tokenizer: object
    prompts: PromptDataset


def same_vocabulary(tokenizer, other) -> bool:
    """Whether two tokenizers map every token to the same id (then log-probs of one's ids mean the same)."""
    return tokenizer is other or tokenizer.get_vocab() == other.get_vocab()


def outcome_statistics(outcomes: torch.Tensor, policy_lengths: torch.Tensor, baseline_lengths: torch.Tensor,
                       l2: float = 1e-2) -> Dict[str, object]:
    """Win/tie/loss rates with Wilson intervals and the length-controlled win rate of (N,) outcomes, the
    length difference being ``policy_lengths - baseline_lengths`` (N,) (characters of the responses)."""
    summary = win_rate_summary(outcomes)
    summary["length_controlled"] = length_controlled_win_rate(outcomes, policy_lengths.double() - baseline_lengths.double(),
                                                              l2=l2)
    return summary


def judge_samples(judge, conversations: List, policy: Samples, baseline: Samples,
                  tie_threshold: float = 0.0):
    """Outcomes (N,) of the policy's responses against the baseline's, and the judgement.

    Identical responses are ties without asking the judge's opinion (numerically a judge might not
    score two copies of the same text exactly alike when they sit in different batches).
    """
    judgement: Judgement = judge.compare(conversations, policy.texts, baseline.texts)
    outcomes = outcomes_from_margins(judgement.margins, tie_threshold)
    identical = torch.tensor([p == b for p, b in zip(policy.texts, baseline.texts)], dtype=torch.bool)
    outcomes[identical] = 0.5
    return outcomes, judgement


def sample_baseline(baseline: Contestant, settings: SamplingSettings, device: str = "cpu") -> Samples:
    """The baseline's answer to every prompt (no KL: it is the reference of the comparison)."""
    return sample_responses(baseline.actor, baseline.tokenizer, baseline.prompts, settings, None, device,
                            desc="baseline answers")


def compare_policies(policy: Contestant, baseline: Contestant, judge, settings: SamplingSettings,
                     tie_threshold: float = 0.0, device: str = "cpu",
                     baseline_samples: Optional[Samples] = None) -> Dict[str, object]:
    """Both policies answer every prompt with the same sampling settings and seed; ``judge`` picks.

    Returns the win/tie/loss rates of the policy (Wilson 95% intervals), the length-controlled win rate
    (``stats.length_controlled_win_rate`` on the character-length difference), the mean response lengths
    (tokens of each model's tokenizer, and characters), the judge's own statistics, and the mean
    per-response KL of the policy to the baseline on the policy's samples (summed k1; None when their
    tokenizers differ). ``records`` holds every prompt's responses, margin and outcome.

    ``baseline_samples``: the baseline's answers from ``sample_baseline`` with the same settings, when several
    policies meet one baseline (its answers depend only on the baseline and the settings, so they are drawn once).
    """
    if len(policy.prompts) != len(baseline.prompts):
        raise ValueError(f"the policy reads {len(policy.prompts)} prompts but the baseline "
                         f"{len(baseline.prompts)}")
    reference: Optional[Actor] = baseline.actor if same_vocabulary(policy.tokenizer, baseline.tokenizer) else None
    policy_samples = sample_responses(policy.actor, policy.tokenizer, policy.prompts, settings, reference, device,
                                      desc="policy answers")
    if baseline_samples is None:
        baseline_samples = sample_baseline(baseline, settings, device)
    conversations = policy.prompts.messages
    outcomes, judgement = judge_samples(judge, conversations, policy_samples, baseline_samples, tie_threshold)
    chars = [torch.tensor([len(t) for t in s.texts], dtype=torch.float64) for s in (policy_samples, baseline_samples)]
    result: Dict[str, object] = outcome_statistics(outcomes, chars[0], chars[1])
    # The policy's answers went first: name the judge's per-side figures after the contestants.
    result["judge"] = {k.replace("first", "policy").replace("second", "baseline"): v for k, v in judgement.stats.items()}
    for name, samples, char_lengths in (("policy", policy_samples, chars[0]), ("baseline", baseline_samples, chars[1])):
        result[f"{name}_length_tokens"] = float(samples.lengths.double().mean())
        result[f"{name}_length_chars"] = float(char_lengths.mean())
    kl = policy_samples.kl
    result["kl"], result["kl_stderr"] = mean_and_stderr(kl) if kl is not None else (None, None)
    result["records"] = [
        {"prompt": conversations[i][-1]["content"], "policy": policy_samples.texts[i],
         "baseline": baseline_samples.texts[i], "margin": float(judgement.margins[i]), "outcome": float(outcomes[i]),
         "kl": None if kl is None else float(kl[i])}
        for i in range(len(conversations))]
    return result
