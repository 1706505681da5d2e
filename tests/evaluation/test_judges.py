"""Judges: both-order judging cancels a position bias, a length-loving judge gives the expected win rate,
and the LLM / reward-model judges compute what they document on tiny models."""

import pytest
import torch

from minichatgpt.data.encoding import Encoder
from minichatgpt.evaluation import (Judgement, LLMJudge, RewardModelJudge, Samples, judge_both_orders,
                                    judge_samples, outcomes_from_margins, win_rate_summary)
from minichatgpt.evaluation.judges import JUDGE_TEMPLATE, render_conversation
from minichatgpt.nn import Actor, RewardModel

PROMPTS = [[{"role": "user", "content": f"describe the cat {i}"}] for i in range(6)]
POLICY = ["the cat is sweet and gentle", "the cat", "a b c", "x", "same answer", "one two three four"]
BASELINE = ["the cat is", "the cat is very lovely", "a b", "x y", "same answer", "one"]


def words(text: str) -> int:
    return len(text.split())


def length_preference(first, second) -> torch.Tensor:
    return torch.tensor([float(words(a) - words(b)) for a, b in zip(first, second)])


class LengthJudge:
    """Prefers the longer answer (in words); no position bias."""

    def compare(self, conversations, first, second):
        return Judgement(length_preference(first, second), {})


def test_a_judge_that_prefers_longer_answers_gives_the_expected_win_rate():
    samples = [Samples(texts, torch.tensor([words(t) for t in texts]), None) for texts in (POLICY, BASELINE)]
    outcomes, _ = judge_samples(LengthJudge(), PROMPTS, samples[0], samples[1])
    longer = sum(words(p) > words(b) for p, b in zip(POLICY, BASELINE))
    equal = sum(words(p) == words(b) for p, b in zip(POLICY, BASELINE))
    summary = win_rate_summary(outcomes)
    assert summary["win_rate"] == longer / len(POLICY) and summary["tie_rate"] == equal / len(POLICY)
    assert summary["win_rate_ties_half"] == (longer + equal / 2) / len(POLICY)


def test_identical_answers_are_ties_whatever_the_judge_says():
    class Contrarian:
        def compare(self, conversations, first, second):
                return Judgement(torch.ones(len(first)), {})

    same = Samples(["a", "b"], torch.tensor([1, 1]), None)
    outcomes, _ = judge_samples(Contrarian(), PROMPTS[:2], same, same)
    assert outcomes.tolist() == [0.5, 0.5]


def test_both_order_judging_cancels_a_position_biased_judge():
    bias = 50.0  # always prefers position A by far more than any true difference

    def biased(conversations, first, second):
        return bias + length_preference(first, second)

    one_order = outcomes_from_margins(biased(PROMPTS, POLICY, BASELINE))
    assert one_order.tolist() == [1.0] * len(POLICY)  # asked once, the policy "wins" everything
    judgement = judge_both_orders(biased, PROMPTS, POLICY, BASELINE)
    torch.testing.assert_close(judgement.margins, length_preference(POLICY, BASELINE).double())
    assert judgement.stats["position_bias"] == pytest.approx(bias)
    assert judgement.stats["order_agreement"] == 0.0  # every verdict flipped with the order


def test_outcomes_from_margins_with_a_tie_threshold():
    margins = torch.tensor([0.3, -0.3, 0.05, -0.05, 0.0])
    assert outcomes_from_margins(margins, 0.1).tolist() == [1.0, 0.0, 0.5, 0.5, 0.5]
    assert outcomes_from_margins(margins).tolist() == [1.0, 0.0, 1.0, 0.0, 0.5]


def test_llm_judge_preference_is_the_log_prob_difference_of_a_and_b(eval_model_dirs, eval_tokenizer):
    """Left-padded batches give, for each pair, log p(A) - log p(B) of the unpadded judge prompt."""
    word_tokenizer = eval_tokenizer
    judge = LLMJudge(Actor(pretrained=eval_model_dirs["lm"]), word_tokenizer, max_len=512, batch_size=4)
    preference = judge.preference(PROMPTS[:3], POLICY[:3], BASELINE[:3])
    encoder = Encoder(word_tokenizer)
    a_id, b_id = (encoder.text_ids(encoder.response_text(letter))[0] for letter in "AB")
    assert a_id != b_id and word_tokenizer.unk_token_id not in (a_id, b_id)
    for i in range(3):
        question = JUDGE_TEMPLATE.format(conversation=render_conversation(PROMPTS[i]), first=POLICY[i],
                                         second=BASELINE[i])
        ids = torch.tensor([encoder.prompt_ids([{"role": "user", "content": question}], "test")])
        with torch.no_grad():
            log_probs = judge.judge.model(input_ids=ids).logits[0, -1].log_softmax(-1)
        assert float(preference[i]) == pytest.approx(float(log_probs[a_id] - log_probs[b_id]), abs=1e-4)


def test_reward_model_judge_scores_prompt_plus_response(tiny_model_dirs, word_tokenizer):
    torch.manual_seed(0)
    rm = RewardModel(pretrained=tiny_model_dirs["gpt2"]).eval()
    judge = RewardModelJudge(rm, word_tokenizer, max_len=64, batch_size=4)
    judgement = judge.compare(PROMPTS, POLICY, BASELINE)
    encoder = Encoder(word_tokenizer)
    for i in (0, 3):
        ids = torch.tensor([encoder.prompt_ids(PROMPTS[i], "t") + encoder.response_ids(POLICY[i])])
        ids_b = torch.tensor([encoder.prompt_ids(PROMPTS[i], "t") + encoder.response_ids(BASELINE[i])])
        with torch.no_grad():
            expected = rm(ids, torch.ones_like(ids)) - rm(ids_b, torch.ones_like(ids_b))
        assert float(judgement.margins[i]) == pytest.approx(float(expected), abs=1e-5)
