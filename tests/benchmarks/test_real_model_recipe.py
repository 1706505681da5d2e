"""``benchmarks/real_model_recipe.sh --smoke``: the SmolLM2 recipe end to end in seconds-size stages."""

import json
import os
import subprocess
import sys

import pytest

from conftest import SHARED, SHARED_DATA, SMOLLM2_GGUF, requires_shared

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@requires_shared(SMOLLM2_GGUF)
@requires_shared(os.path.join(SHARED_DATA, "instruction_data_with_preference.json"))
def test_real_model_recipe_smoke(tmp_path):
    out = tmp_path / "recipe"
    env = {**os.environ, "SHARED": os.path.abspath(SHARED), "PYTHON": sys.executable, "PYTHONPATH": ROOT,
           "OMP_NUM_THREADS": "1"}
    script = os.path.join(ROOT, "benchmarks", "real_model_recipe.sh")
    # --until stops after a stage; --resume then runs the rest and keeps what is recorded
    first = subprocess.run(["bash", script, "--smoke", "--until", "rm_proxy", "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "stopped after rm_proxy (--until)" in first.stdout and not (out / "rm_gold").exists()
    proc = subprocess.run(["bash", script, "--smoke", "--resume", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done in an earlier run (stages.tsv), kept") == 3
    stages = [line.split("\t")[0] for line in (out / "stages.tsv").read_text().splitlines()[1:]]
    assert stages == ["split", "sft", "rm_proxy", "rm_gold", "ppo", "dpo", "grpo", "eval"]
    assert "precision: fp32" in (out / "eval" / "config.yaml").read_text()  # merged LoRA deltas kept unrounded
    # by default SFT and the RMs train in bf16, the policies (from the merged LoRA SFT model) in float32
    for name, precision in (("sft", "bf16"), ("rm_gold", "bf16"), ("ppo", "fp32"), ("dpo", "fp32"), ("grpo", "fp32")):
        assert f"precision: {precision}" in (out / name / "config.yaml").read_text(), name
    parts = {name: {json.dumps(json.loads(line)) for line in (out / "data" / f"{name}.jsonl").read_text().splitlines()}
             for name in ("proxy", "gold", "heldout")}
    assert not (parts["proxy"] & parts["gold"]) and not (parts["heldout"] & (parts["proxy"] | parts["gold"]))
    results = json.loads((out / "eval" / "results.json").read_text())
    assert [row["model"] for row in results["reward_models"]] == ["proxy", "gold"]
    duels = results["win_rates"]
    assert [(duel["policy"], duel["baseline"], duel["count"]) for duel in duels] == [
        ("ppo", "sft", 4), ("dpo", "sft", 4), ("grpo", "sft", 4)]
    assert all(duel["kl"] is not None for duel in duels)
    # every trained policy is a loadable Hugging Face directory of its own
    for name in ("ppo", "dpo", "grpo"):
        assert json.loads((out / name / "config.json").read_text())["model_type"] == "llama"
    assert (out / "eval" / "report.png").exists() and (out / "eval" / "report.md").exists()
    # --resume keeps every stage stages.tsv records: nothing is re-run, the table is untouched
    before = (out / "stages.tsv").read_text()
    again = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "real_model_recipe.sh"), "--smoke", "--resume",
                            "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("done in an earlier run (stages.tsv), kept") == len(stages)
    assert (out / "stages.tsv").read_text() == before


def test_until_names_the_stages_when_it_is_not_one(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "real_model_recipe.sh"), "--until", "sfft",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SHARED": os.path.abspath(SHARED)})
    assert proc.returncode == 2
    assert "--until sfft is not a stage (split, sft, rm_proxy" in proc.stderr
    assert not (tmp_path / "x").exists()  # checked before anything is written
