"""The benchmark scripts end to end on the smallest preset: table printed, one JSON line appended.

The naive runs call each script's ``main(argv)`` in this process (no interpreter start-up); one
distributed test runs ``benchmark_gpt_dummy.py`` under torchrun with 2 CPU processes (gloo).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
PPO_ARGS = ["--model", "tiny", "--num_episodes", "1", "--max_timesteps", "2", "--update_timesteps", "2",
            "--max_epochs", "1", "--experience_batch_size", "4", "--train_batch_size", "4", "--max_input_len", "16",
            "--max_new_tokens", "8"]
SUPERVISED_ARGS = ["--model", "tiny", "--strategy", "naive", "--steps", "2", "--warmup_steps", "1", "--batch_size",
                   "2", "--seq_len", "32"]
PHASES = ("generation", "experience", "training", "overall")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table_rows(output: str) -> dict:
    """{phase: [time, samples/s, tokens/s, TFLOPS, TFLOPS/rank]} from the printed table."""
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0] in PHASES:
            rows[parts[0]] = [float(x) for x in parts[1:]]
    return rows


def read_results(path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_record(record: dict, phases, world_size: int) -> None:
    assert record["world_size"] == world_size
    assert record["versions"]["torch"] and record["versions"]["transformers"]
    assert record["config"]["model"] == "tiny"
    assert all(count > 0 for count in record["params"].values())
    results = record["results"]
    assert list(results["phases"]) == list(phases)
    for phase in phases:
        row = results["phases"][phase]
        assert row["time_s"] > 0 and row["samples_per_s"] > 0 and row["tokens_per_s"] > 0 and row["tflops"] > 0
        assert row["tflops_per_rank"] == pytest.approx(row["tflops"] / world_size)
    memory = results["peak_memory"]
    assert len(memory["per_rank_bytes"]) == world_size and memory["max_bytes"] == max(memory["per_rank_bytes"]) > 0
    assert results["matmul_tflops_per_rank"] > 0
    assert results["training_matmul_fraction"] == pytest.approx(
        results["phases"]["training"]["tflops_per_rank"] / results["matmul_tflops_per_rank"])


def test_gpt_dummy_naive(tmp_path, capsys):
    results = tmp_path / "results" / "ppo.jsonl"
    load_script("benchmark_gpt_dummy").main(PPO_ARGS + ["--strategy", "naive", "--results", str(results)])
    out = capsys.readouterr().out
    assert set(table_rows(out)) == set(PHASES)
    assert "peak memory" in out and "fraction of matmul throughput" in out
    (record,) = read_results(results)
    check_record(record, PHASES, world_size=1)
    assert record["config"]["critic_model"] == "tiny" and record["config"]["strategy"] == "naive"
    phases = record["results"]["phases"]
    # EOS is outside the vocabulary: every response has exactly max_new_tokens tokens.
    assert phases["generation"]["tokens"] == 2 * 4 * 8 and record["metrics"]["response_length"] == 8
    assert phases["training"]["tokens"] == 2 * 4 * (16 + 8)


def test_gpt_dummy_lora_shares_reference_and_trains_critic_adapters(tmp_path):
    results = tmp_path / "ppo.jsonl"
    record = load_script("benchmark_gpt_dummy").main(PPO_ARGS + ["--strategy", "naive", "--lora_rank", "2",
                                                                 "--results", str(results)])
    params = record["params"]
    assert params["reference"] == params["actor"]  # the actor with adapters off, not a second model
    assert 0 < params["actor_trainable"] < params["actor"]
    head = 128  # the value head of the tiny preset (d_model x 1)
    assert head < params["critic_trainable"] < params["critic"]  # adapters too, not only the head


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_supervised_naive(stage, tmp_path, capsys):
    results = tmp_path / f"{stage}.jsonl"
    load_script(f"benchmark_{stage}").main(SUPERVISED_ARGS + ["--results", str(results)])
    assert set(table_rows(capsys.readouterr().out)) == {"training"}
    (record,) = read_results(results)
    check_record(record, ["training"], world_size=1)
    row = record["results"]["phases"]["training"]
    assert row["samples"] == 2 * 2
    assert row["tokens"] == 2 * 2 * 32 * (1 if stage == "sft" else 2)  # an RM pair is two sequences
    assert row["flops"] == 6 * record["params"]["model"] * row["tokens"]
    assert "loss" in record["metrics"]  # the timed fit ran its steps (a reused trainer skipped them)


def test_supervised_bf16_measures_the_bf16_matmul_rate(tmp_path):
    results = tmp_path / "sft.jsonl"
    load_script("benchmark_sft").main(SUPERVISED_ARGS + ["--precision", "bf16", "--results", str(results)])
    (record,) = read_results(results)
    assert record["config"]["precision"] == "bf16" and record["metrics"]["loss"] > 0


def test_gpu_check_dry_run_prints_the_plan_within_eight_minutes(tmp_path):
    script = os.path.join(BENCHMARKS, "gpu_check.sh")
    result = subprocess.run(["bash", script, "--dry_run", "--out", str(tmp_path)], capture_output=True, text=True,
                            env=dict(os.environ, OUT=""))
    assert result.returncode == 0, result.stderr
    steps = [line.split()[0] for line in result.stdout.splitlines()[1:-1]]
    assert steps == ["install", "pytest_gpu", "ppo_bf16", "ppo_bf16_lora", "sft_bf16", "rm_bf16", "generate",
                     "generate_graph"]
    assert "--no-deps" in result.stdout and "-m gpu" in result.stdout and str(tmp_path) in result.stdout
    assert "--decode dynamic,cuda_graph" in result.stdout.splitlines()[-2]  # the CUDA-graph decode step
    assert int(result.stdout.splitlines()[-1].split(":")[1].strip().rstrip("s")) <= 8 * 60
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_gpt_dummy_ddp_under_torchrun(tmp_path):
    results = tmp_path / "ppo.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), os.path.join(BENCHMARKS, "benchmark_gpt_dummy.py"),
           "--strategy", "ddp", "--results", str(results)] + PPO_ARGS
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(table_rows(result.stdout)) == set(PHASES)
    (record,) = read_results(results)  # rank 0 only writes
    check_record(record, PHASES, world_size=2)
    assert record["results"]["phases"]["generation"]["samples"] == 2 * 2 * 4  # both ranks' rollouts


def test_bench_precision_bf16_methods_times_all_three():
    best = load_script("bench_precision").main(["--model", "tiny", "--bf16_methods", "--repeats", "1",
                                                 "--batch_size", "2", "--seq_len", "16"])
    assert set(best) == {"fp32", "autocast", "bf16_weights"} and all(0 < s < 60 for s in best.values())


@pytest.mark.slow
def test_bench_precision_compares_fp32_and_bf16_on_every_stage(tmp_path):
    results = tmp_path / "precision.jsonl"
    summary = load_script("bench_precision").main(
        ["--model", "tiny", "--repeats", "1", "--steps", "1", "--seq_len", "32", "--batch_size", "2",
         "--ppo_prompt_len", "8", "--ppo_new_tokens", "4", "--results", str(results)])
    assert set(summary["stages"]) == {"sft", "rm", "ppo"}
    for stage, rows in summary["stages"].items():
        assert set(rows) == {"fp32", "bf16"} and all(r["train_step_s"] > 0 for r in rows.values())
        assert summary["ratios"][stage]["train_step_speedup"] > 0
    assert summary["ratios"]["sft"]["final_close"]  # one step: the losses agree to bf16 precision
    assert json.loads(results.read_text().splitlines()[-1])["config"]["model"] == "tiny"


@pytest.mark.slow  # transformers builds its paged-cache manager: about 45 s
def test_compare_continuous_batching_reports_both_sides_per_family(capsys):
    load_script("compare_continuous_batching").main(["--families", "gpt2,bloom", "--prompts", "2",
                                                       "--max_new_tokens", "3"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    by_model = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}
    assert set(by_model) == {"gpt2", "bloom"}
    for cells in by_model.values():
        assert cells[3] == "True" and float(cells[4]) >= 0  # the decode core equals generate alone (timed)
        assert cells[0] and cells[1] in ("True", "False", "-")  # transformers' side: runs or says why not


@pytest.mark.slow
def test_bench_server_measures_each_client_level_against_one_client(tiny_model_dirs, capsys, tmp_path):
    out = tmp_path / "server.json"
    load_script("bench_server").main(["--model", tiny_model_dirs["gpt2"], "--clients", "1,2", "--requests", "2",
                                      "--max_tokens", "4", "--rounds", "1", "--threads", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["clients"] for r in rows] == [1, 2] and all(r["tokens_per_s"] > 0 for r in rows)
    assert "| 1 |" in capsys.readouterr().out
