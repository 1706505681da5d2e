"""The side-by-side comparison scripts (``benchmarks/compare_*.py``) run end to end on a tiny setting.

Each runs in this process (imports are shared) on a 1-layer, 32-wide GPT-2, the demo data and one step,
and must print its table with a ratio row and append one JSON record. A peer that is not installed
(TRL for SFT/RM, a Python with trl <= 1.12 for PPO) skips that test; the scripts themselves then run
the minichatgpt side alone, which is checked with the peer hidden.
"""

import importlib
import importlib.util
import json
import os
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
TINY = ["--data", "demo", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--steps", "1", "--repeats", "1",
        "--warmup", "0", "--batch_size", "2"]
HAS_TRL = importlib.util.find_spec("trl") is not None


def load(name: str):
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def keep_threads():
    """The scripts set torch's thread count for the whole process; give the rest of the suite its own back."""
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


def run(script: str, extra, tmp_path, capsys):
    results = tmp_path / "compare.jsonl"
    load(script).main(TINY + list(extra) + ["--results", str(results)])
    out = capsys.readouterr().out
    with open(results) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 1 and records[0]["benchmark"] == script
    return out, records[0]


def check_ratios(out: str, record: dict, expected: int) -> None:
    ratio_lines = [line for line in out.splitlines() if line.startswith("ratio minichatgpt")]
    assert len(ratio_lines) == expected, out
    assert all("(tokens per CPU second)" in line for line in ratio_lines)
    assert len(record["ratios"]) == expected and all(r["ratio"] > 0 for r in record["ratios"])


@pytest.mark.skipif(not HAS_TRL, reason="trl is not installed (the SFT/RM peer)")
def test_compare_sft(tmp_path, capsys):
    out, record = run("compare_sft", ["--seq_len", "12"], tmp_path, capsys)
    check_ratios(out, record, 1)
    assert record["results"]["minichatgpt SFTTrainer"]["tokens"] == 2 * 12


@pytest.mark.skipif(not HAS_TRL, reason="trl is not installed (the SFT/RM peer)")
def test_compare_rm(tmp_path, capsys):
    out, record = run("compare_rm", ["--seq_len", "10"], tmp_path, capsys)
    check_ratios(out, record, 1)


@pytest.mark.skipif(not HAS_TRL, reason="trl is not installed (the DPO peer)")
def test_compare_dpo(tmp_path, capsys):
    out, record = run("compare_dpo", ["--seq_len", "10"], tmp_path, capsys)
    check_ratios(out, record, 1)


@pytest.mark.skipif(not HAS_TRL, reason="trl is not installed (the GRPO peer)")
def test_compare_grpo(tmp_path, capsys):
    out, record = run("compare_grpo", ["--seq_len", "8", "--max_new_tokens", "4", "--num_generations", "2"],
                      tmp_path, capsys)
    check_ratios(out, record, 1)
    for side in record["results"].values():
        # 2 prompts x 2 samples: 8 prompt tokens each, plus each sampled token twice (1 to 4 of them, EOS included)
        assert 4 * (8 + 2 * 1) <= side["tokens"] <= 4 * (8 + 2 * 4)


def test_reward_is_the_share_of_the_letter_e():
    assert load("compare_grpo").letter_e_reward(["p", "p", "p"], ["eve", "", "xyz"]) == [2 / 3, 0.0, 0.0]


def test_compare_generate(tmp_path, capsys):
    out, record = run("compare_generate", ["--seq_len", "6", "--max_new_tokens", "4"], tmp_path, capsys)
    check_ratios(out, record, 4)  # against HF generate and HF generate + logprobs, greedy and sampling
    assert "greedy tokens identical between minichatgpt and HF generate: True" in out


def test_compare_generate_groups_and_spread_eos(tmp_path, capsys):
    out, record = run("compare_generate", ["--seq_len", "6", "--max_new_tokens", "6", "--modes", "eos,group",
                                           "--group_size", "3", "--eos_share", "0.25"], tmp_path, capsys)
    check_ratios(out, record, 3)  # eos: against HF generate and HF generate + logprobs; group: against HF generate
    group = record["results"]["minichatgpt generate [group]"]["tokens"]
    assert 0 < group < 3 * 2 * 6  # 2 prompts x 3 samples, most ending before the 6-token cap


def test_spread_eos_ids_are_the_eos_id_and_a_share_of_the_vocabulary():
    ids = load("compare_generate").spread_eos_ids(100, eos_token_id=7, pad_token_id=0, share=0.1, seed=1)
    assert ids[0] == 7 and len(ids) == 11 and len(set(ids)) == 11 and 0 not in ids[1:] and max(ids) < 100


def test_compare_ppo(tmp_path, capsys):
    compare_ppo = load("compare_ppo")
    python = compare_ppo.peer_python(None)
    if python is None:
        pytest.skip("no Python with trl.experimental.ppo (trl <= 1.12): see benchmarks/compare_ppo.py")
    out, record = run("compare_ppo", ["--seq_len", "6", "--max_new_tokens", "4", "--peer_python", python],
                      tmp_path, capsys)
    check_ratios(out, record, 1)


def test_missing_peers_are_skipped_cleanly(tmp_path, capsys, monkeypatch):
    load("compare_sft")
    for module in ("compare_common", "compare_trl"):  # compare_trl decides whether TRL's side runs
        monkeypatch.setattr(load(module), "version_of", lambda package: None)
    out, record = run("compare_sft", ["--seq_len", "12"], tmp_path, capsys)
    assert "skipped trl SFTTrainer: trl is not installed" in out
    check_ratios(out, record, 0)
    out, record = run("compare_ppo", ["--seq_len", "6", "--max_new_tokens", "4", "--peer_python",
                                      str(tmp_path / "no-such-python")], tmp_path / "ppo", capsys)
    assert "skipped trl PPOTrainer: --peer_python" in out
    check_ratios(out, record, 0)


def test_compare_generate_times_each_decode_mode_against_the_first_and_hf(tmp_path, capsys):
    out, record = run("compare_generate", ["--seq_len", "6", "--max_new_tokens", "4", "--modes", "greedy",
                                           "--decode", "dynamic,static"], tmp_path, capsys)
    check_ratios(out, record, 5)  # each decode against the two HF sides, static against dynamic
    assert "minichatgpt generate static [greedy]" in record["results"]
    assert "greedy tokens identical between minichatgpt static and HF generate: True" in out
    with pytest.raises(SystemExit, match="--decode: unknown \\['eager'\\]"):
        load("compare_generate").main(["--decode", "dynamic,eager"])
