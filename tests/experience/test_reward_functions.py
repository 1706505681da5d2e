"""Reward functions: loading by file or module path, the weighted sum, and every error path."""

import textwrap
import time

import pytest
import torch
from torch.testing import assert_close

from minichatgpt import demo
from minichatgpt.experience.reward_functions import RewardFunctionError, RewardFunctions, load_reward_function

PROMPTS = ["Human: describe the cat Assistant:", "Human: describe the dog Assistant:", "Human: what is x"]
RESPONSES = ["the cat is lovely .", "the dog is dull", "no"]


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(textwrap.dedent('''
        import time

        def length(prompts, responses, **columns):
            return [len(r.split()) for r in responses]

        def with_answer(prompts, responses, answer, **columns):
            return [float(r == a) for r, a in zip(responses, answer)]

        def raises_on_dog(prompts, responses, **columns):
            return [1 / 0 if "dog" in r else 1.0 for r in responses]

        def too_short(prompts, responses, **columns):
            return [1.0]

        def nan_on_no(prompts, responses, **columns):
            return [float("nan") if r == "no" else 0.0 for r in responses]

        def hangs(prompts, responses, **columns):
            time.sleep(600)
            return [0.0] * len(responses)
    '''))
    return str(path)


def test_weighted_sum_of_file_and_module_functions(reward_file):
    fns = RewardFunctions([f"{reward_file}:length", "minichatgpt.demo:hidden_rule_reward"], [0.5, 2.0])
    expected = [0.5 * len(r.split()) + 2.0 * demo.ground_truth_score(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    assert_close(fns(PROMPTS, RESPONSES), torch.tensor(expected))


def test_columns_are_passed_as_keywords(reward_file):
    fns = RewardFunctions([f"{reward_file}:with_answer"])
    assert fns(PROMPTS, RESPONSES, {"answer": ["x", "the dog is dull", "no"]}).tolist() == [0.0, 1.0, 1.0]


def test_hidden_rule_reward_is_the_ground_truth():
    assert demo.hidden_rule_reward(PROMPTS, RESPONSES) == [demo.ground_truth_score(p, r)
                                                         for p, r in zip(PROMPTS, RESPONSES)]
    assert demo.hidden_rule_reward(PROMPTS[:1], ["the cat is lovely . <eos>"]) == [1.0]


@pytest.mark.parametrize("spec,match", [("nofile.py:f", "does not exist"), ("no_such_module_xyz:f", "cannot import"),
                                        ("minichatgpt.demo:nothing", "no function 'nothing'"),
                                        ("just_a_name", "expected")])
def test_bad_names(spec, match):
    with pytest.raises(RewardFunctionError, match=match):
        load_reward_function(spec)


def test_raise_names_function_and_sample(reward_file):
    with pytest.raises(RewardFunctionError, match=r"raises_on_dog raised ZeroDivisionError.*sample 1 \(prompt "
                                                  r"'Human: describe the dog"):
        RewardFunctions([f"{reward_file}:raises_on_dog"])(PROMPTS, RESPONSES)


def test_wrong_length_and_nan(reward_file):
    with pytest.raises(RewardFunctionError, match="too_short returned 1 rewards for 3 samples"):
        RewardFunctions([f"{reward_file}:too_short"])(PROMPTS, RESPONSES)
    with pytest.raises(RewardFunctionError, match="nan_on_no returned nan for sample 2 .*response 'no'"):
        RewardFunctions([f"{reward_file}:nan_on_no"])(PROMPTS, RESPONSES)


def test_weights_must_match():
    with pytest.raises(ValueError, match="2 reward weights for 1"):
        RewardFunctions(["minichatgpt.demo:hidden_rule_reward"], [1.0, 2.0])


def test_workers_give_the_same_result_and_errors(reward_file):
    fns = RewardFunctions([f"{reward_file}:length", "minichatgpt.demo:hidden_rule_reward"], workers=2, timeout=30)
    try:
        assert_close(fns(PROMPTS, RESPONSES), RewardFunctions(fns.specs)(PROMPTS, RESPONSES))
    finally:
        fns.close()
    fns = RewardFunctions([f"{reward_file}:nan_on_no"], workers=2, timeout=30)
    try:
        with pytest.raises(RewardFunctionError, match="sample 2"):  # index within the whole batch
            fns(PROMPTS, RESPONSES)
    finally:
        fns.close()


def test_hanging_function_is_reported_and_killed(reward_file):
    fns = RewardFunctions([f"{reward_file}:hangs"], workers=1, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(RewardFunctionError, match=r"hangs did not return within --reward_timeout 0.5 s"):
        fns(PROMPTS, RESPONSES)
    assert time.monotonic() - start < 10 and fns._pool is None


@pytest.mark.timeout(60)
def test_workers_end_when_closed_during_a_training_run(reward_file):
    """Workers forked inside ``fit`` (whose SIGTERM handler only records the signal) still end on ``close``.
    (A full-suite run once hung in ``Pool.terminate`` here; this test does not reproduce that race.)"""
    from minichatgpt.trainer.guards import StopRequest

    with StopRequest():
        fns = RewardFunctions([f"{reward_file}:length"], workers=2, timeout=30)
        fns(["a", "b"], ["x", "yy"])
        fns.close()
    assert fns._pool is None
