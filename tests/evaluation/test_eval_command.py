"""``minichatgpt eval`` end to end on tiny saved models: JSON, Markdown, PNG; errors name the flag."""

import json
import math

import pytest

from minichatgpt import cli

PROMPTS = [{"instruction": f"describe the {w}"} for w in ("cat", "dog", "cake", "city", "soup")]
PAIRS = [{"prompt": f"describe the {w}", "chosen": "sweet and gentle", "rejected": "boring", "subset": s}
         for w, s in (("cat", "a"), ("dog", "a"), ("cake", "b"), ("city", "b"), ("soup", "b"), ("bread", "a"))]


@pytest.fixture()
def files(tmp_path):
    paths = {}
    for name, records in (("prompts", PROMPTS), ("pairs", PAIRS), ("text", [{"text": "the cat is sweet"}] * 3)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return {k: str(v) for k, v in paths.items()}


def test_eval_writes_json_markdown_and_png(eval_model_dirs, files, tmp_path):
    out = tmp_path / "eval"
    rc = cli.main(["eval", "--output_dir", str(out), "--reward_model", f"proxy={eval_model_dirs['rm']}",
                   "--pairs", files["pairs"], "--policy", f"ppo={eval_model_dirs['lm2']}",
                   "--baseline", f"sft={eval_model_dirs['lm']}", "--prompts", files["prompts"],
                   "--judge_rm", eval_model_dirs["rm"], "--text", files["text"], "--max_new_tokens", "4",
                   "--batch_size", "2", "--split", files["pairs"], "--split_parts", "x=2,y=0.5"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    (rm_row,) = results["reward_models"]
    assert rm_row["model"] == "proxy" and list(rm_row["subsets"]) == ["all", "a", "b"]
    assert rm_row["subsets"]["all"]["count"] == len(PAIRS)
    (duel,) = results["win_rates"]
    assert (duel["policy"], duel["baseline"], duel["count"]) == ("ppo", "sft", len(PROMPTS))
    assert duel["win_rate"] + duel["tie_rate"] + duel["loss_rate"] == pytest.approx(1.0)
    assert math.isfinite(duel["kl"]) and 0 <= duel["length_controlled"]["lc_win_rate"] <= 1
    assert {"policy_mean_score", "baseline_mean_score"} == set(duel["judge"])
    assert {row["model"] for row in results["perplexity"]} == {"ppo", "sft"}
    assert results["split"]["x"]["records"] == 2 and results["split"]["y"]["records"] == 3
    report = (out / "report.md").read_text()
    assert "| proxy | pairs.jsonl | b | 3 |" in report and "| ppo | sft | RM " in report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from minichatgpt.recipes.eval import build_parser

    config = build_parser().parse_args(["--config", str(out / "config.yaml")])  # the written config reruns it
    assert config.output_dir == str(out) and config.reward_model == [f"proxy={eval_model_dirs['rm']}"]
    samples = [json.loads(line) for line in (out / "win_rate_samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == [p["instruction"] for p in PROMPTS]


def test_a_policy_against_itself_ties_everything_with_zero_kl(eval_model_dirs, files, tmp_path):
    """Same weights, same sampling flags and seed: identical answers, so the LLM judge is not even asked."""
    out = tmp_path / "self"
    rc = cli.main(["eval", "--output_dir", str(out), "--policy", eval_model_dirs["lm"], "--baseline",
                   eval_model_dirs["lm"], "--prompts", files["prompts"], "--judge_lm", eval_model_dirs["lm2"],
                   "--max_new_tokens", "4", "--batch_size", "3"])
    assert rc == 0
    (duel,) = json.loads((out / "results.json").read_text())["win_rates"]
    assert duel["tie_rate"] == 1.0 and duel["win_rate_ties_half"] == 0.5
    assert abs(duel["kl"]) < 1e-4 and duel["policy_length_tokens"] == duel["baseline_length_tokens"]
    assert {"position_bias", "order_agreement"} <= set(duel["judge"])


def test_several_policies_meet_one_baseline_sampled_once(eval_model_dirs, files, tmp_path, monkeypatch):
    """The baseline's answers depend only on it and the sampling flags: drawn once, the same for every policy."""
    from minichatgpt.evaluation import win_rate

    calls = []
    real = win_rate.sample_responses
    monkeypatch.setattr(win_rate, "sample_responses", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
    out = tmp_path / "two"
    rc = cli.main(["eval", "--output_dir", str(out), "--policy", f"a={eval_model_dirs['lm2']}",
                   f"b={eval_model_dirs['lm']}", "--baseline", f"sft={eval_model_dirs['lm']}", "--prompts",
                   files["prompts"], "--judge_rm", eval_model_dirs["rm"], "--max_new_tokens", "4", "--batch_size", "2"])
    assert rc == 0
    assert calls == ["baseline answers", "policy answers", "policy answers"]
    samples = [json.loads(line) for line in (out / "win_rate_samples.jsonl").read_text().splitlines()]
    # each record names its models (the answers' texts are under "policy" and "baseline")
    assert {(s["policy_model"], s["baseline_model"]) for s in samples} == {("a", "sft"), ("b", "sft")}
    by_policy = {name: [s["baseline"] for s in samples if s["policy_model"] == name] for name in ("a", "b")}
    assert by_policy["a"] == by_policy["b"] and len(by_policy["a"]) == len(PROMPTS)
    # b has the baseline's weights and seed: its answers are the baseline's, every duel a tie
    assert all(s["outcome"] == 0.5 and s["policy"] == s["baseline"] for s in samples if s["policy_model"] == "b")


@pytest.mark.parametrize("extra,message", [
    (["--pairs", "missing.jsonl", "--reward_model", "RM"], "--pairs 'missing.jsonl': no such file"),
    (["--reward_model", "RM"], "--reward_model needs --pairs"),
    (["--policy", "LM", "--baseline", "LM", "--prompts", "PROMPTS"], "--policy needs a judge"),
    (["--policy", "LM", "--prompts", "PROMPTS", "--judge_rm", "RM"], "--policy needs --baseline"),
    (["--policy", "./nowhere/model", "--baseline", "LM", "--prompts", "PROMPTS", "--judge_rm", "RM"],
     "--policy './nowhere/model' does not exist"),
    (["--split", "PROMPTS", "--split_parts", "a=-1"], "--split_parts 'a=-1'"),
    (["--reward_model", "LM", "--pairs", "PROMPTS"], "has no reward head"),
    (["--policy", "LM", "--baseline", "LM", "--prompts", "PROMPTS", "--judge_rm", "LM"], "--judge_rm"),
    ([], "nothing to evaluate"),
])
def test_errors_name_the_flag(eval_model_dirs, files, tmp_path, capsys, extra, message):
    names = {"RM": eval_model_dirs["rm"], "LM": eval_model_dirs["lm"], "PROMPTS": files["prompts"]}
    argv = ["eval", "--output_dir", str(tmp_path / "err")] + [names.get(a, a) for a in extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_documents_the_methods(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("--judge_lm", "both orders", "Wilson", "length-controlled", "--split_parts", "perplexity"):
        assert phrase in text


def test_bf16_evaluation_matches_float32(eval_model_dirs, files, tmp_path):
    """--precision bf16 casts every model (the reward head stays float32): the same pairs are ranked the same
    way, perplexity and gold scores agree with float32 to bf16's rounding, and the config records it."""
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        rc = cli.main(["eval", "--output_dir", str(out), "--precision", precision, "--reward_model",
                       eval_model_dirs["rm"], "--pairs", files["pairs"], "--policy", eval_model_dirs["lm2"],
                       "--baseline", eval_model_dirs["lm"], "--prompts", files["prompts"], "--judge_rm",
                       eval_model_dirs["rm"], "--text", files["text"], "--greedy", "--max_new_tokens", "4",
                       "--batch_size", "2"])
        assert rc == 0
        results[precision] = json.loads((out / "results.json").read_text())
        assert f"precision: {precision}" in (out / "config.yaml").read_text()
    fp32, bf16 = results["fp32"], results["bf16"]
    margins = [r["reward_models"][0]["subsets"]["all"]["margin"] for r in (fp32, bf16)]
    assert margins[1] == pytest.approx(margins[0], rel=0.05, abs=0.02)
    for a, b in zip(fp32["perplexity"], bf16["perplexity"]):
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=0.03)
    assert bf16["win_rates"][0]["count"] == fp32["win_rates"][0]["count"] == len(PROMPTS)


def test_bf16_placement_keeps_the_reward_head_in_float32(eval_model_dirs):
    import torch

    from minichatgpt.nn import Actor, RewardModel
    from minichatgpt.recipes.eval import EvalConfig, place

    args = EvalConfig(precision="bf16")
    rm = place(RewardModel(pretrained=eval_model_dirs["rm"]), args, "cpu")
    assert rm.value_head.weight.dtype == torch.float32 and not rm.training
    assert {p.dtype for n, p in rm.named_parameters() if not n.startswith("value_head")} == {torch.bfloat16}
    sequences = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 7]])
    scores = rm(sequences, torch.ones_like(sequences))
    assert scores.dtype == torch.float32
    actor = place(Actor(pretrained=eval_model_dirs["lm"]), args, "cpu")
    assert {p.dtype for p in actor.parameters()} == {torch.bfloat16}


def test_bf16_warns_about_models_with_merged_lora_adapters(eval_model_dirs, files, tmp_path, caplog):
    """A directory with adapter/ (what a LoRA run saves) is named in a warning under bf16, not under fp32."""
    import shutil

    lora_rm = tmp_path / "lora_rm"
    shutil.copytree(eval_model_dirs["rm"], lora_rm)
    (lora_rm / "adapter").mkdir()
    for precision in ("fp32", "bf16"):
        caplog.clear()
        rc = cli.main(["eval", "--output_dir", str(tmp_path / precision), "--precision", precision,
                       "--reward_model", str(lora_rm), eval_model_dirs["rm"], "--pairs", files["pairs"]])
        assert rc == 0
        warned = [r.getMessage() for r in caplog.records if "merged into their weights" in r.getMessage()]
        if precision == "fp32":
            assert not warned
        else:
            assert len(warned) == 1 and str(lora_rm) in warned[0] and eval_model_dirs["rm"] not in warned[0]
