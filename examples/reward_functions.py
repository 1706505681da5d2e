"""Example reward functions for ``--reward_fn examples/reward_functions.py:NAME``.

A reward function takes the prompts and the sampled responses (decoded text, one per sample; a prompt
appears once per sample drawn from it) and the prompt dataset's other fields as keyword arguments, one
list per field, and returns one finite float per sample. Combine several with ``--reward_weights``.
"""

import re
from typing import List


def ends_with_period(prompts: List[str], responses: List[str], **columns) -> List[float]:
    """A format rule: 1 when the answer is a finished sentence."""
    return [1.0 if r.replace("<eos>", "").strip().endswith(".") else 0.0 for r in responses]


def brevity(prompts: List[str], responses: List[str], **columns) -> List[float]:
    """A length penalty: minus the number of words over 12."""
    return [-max(0, len(r.split()) - 12) / 12 for r in responses]


def exact_answer(prompts: List[str], responses: List[str], answer: List[str], **columns) -> List[float]:
    """A verifiable answer: 1 when the last number of the response equals the dataset's ``answer`` field
    (prompt records such as ``{"prompt": "2 + 3 = ?", "answer": "5"}``)."""
    rewards = []
    for response, expected in zip(responses, answer):
        numbers = re.findall(r"-?\d+(?:\.\d+)?", response)
        rewards.append(1.0 if numbers and float(numbers[-1]) == float(expected) else 0.0)
    return rewards
