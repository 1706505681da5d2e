"""Reward functions: loading by file or module path, the weighted sum, and every error path."""

import signal
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
        import os
        import signal
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

        def hangs_ignoring_sigterm(prompts, responses, **columns):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(600)

        def exits(prompts, responses, **columns):
            os._exit(3)
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,workers,timeout,match", [
    ("hangs", 1, 0.5, r"hangs did not return within --reward_timeout 0.5 s on samples 0\.\.2"),
    # CI once hung for good in multiprocessing's Pool.terminate, which sends SIGTERM and waits without a limit.
    ("hangs_ignoring_sigterm", 2, 1.0, r"hangs_ignoring_sigterm did not return .* on samples 0\.\.1"),
    ("exits", 2, 30, r"exits: its worker process exited with code 3 on samples (0\.\.1|2\.\.2)"),
])
def test_a_hung_or_dead_worker_is_reported_and_every_worker_killed(reward_file, name, workers, timeout, match):
    fns = RewardFunctions([f"{reward_file}:{name}"], workers=workers, timeout=timeout)
    start = time.monotonic()
    with pytest.raises(RewardFunctionError, match=match):
        fns(PROMPTS, RESPONSES)
    assert time.monotonic() - start < 10 and not fns._pool.running
    fns.specs = [f"{reward_file}:length"]  # the next call gets fresh workers
    assert fns(PROMPTS, RESPONSES).tolist() == [len(r.split()) for r in RESPONSES]
    processes = [process for process, _ in fns._pool._workers]
    fns.close()
    assert len(processes) == workers and not any(process.is_alive() for process in processes)


def _signal_bits(pid: int) -> dict:
    """The caught / ignored / blocked signal masks of ``pid`` from /proc."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key], 16) for key in ("SigCgt", "SigIgn", "SigBlk")}


@pytest.mark.timeout(60)
def test_workers_forked_during_a_training_run_do_not_keep_its_stop_handler(reward_file):
    """Inside ``fit`` the trainer's stop handler (which only records SIGTERM) is installed; a worker must not
    inherit it (it would outlive close's SIGTERM), and Ctrl-C is the trainer's to handle, not the workers'."""
    from minichatgpt.trainer.guards import StopRequest

    with StopRequest():
        fns = RewardFunctions([f"{reward_file}:length"], workers=2, timeout=30)
        fns(["a", "b"], ["x", "yy"])
        processes = [process for process, _ in fns._pool._workers]
        for process in processes:
            bits = _signal_bits(process.pid)
            term, interrupt = 1 << (signal.SIGTERM - 1), 1 << (signal.SIGINT - 1)
            assert not bits["SigCgt"] & term and not bits["SigIgn"] & term and not bits["SigBlk"] & term
            assert bits["SigIgn"] & interrupt
        fns.close()
    assert fns._pool is None and not any(process.is_alive() for process in processes)
