import json
import time

from minichatgpt.trainer import MetricsLogger, PerformanceEvaluator


def test_performance_evaluator_rates_follow_from_counts():
    perf = PerformanceEvaluator()
    for phase, samples, tokens, flops in (("generation", 8, 80, 1e9), ("experience", 8, 160, 2e9)):
        perf.on_phase_start(phase)
        time.sleep(0.02)
        perf.on_phase_end(phase, samples, tokens, flops)
    summary = perf.summary()
    gen = summary["generation"]
    assert abs(gen["samples_per_s"] * gen["time_s"] - 8) < 1e-6
    assert abs(gen["tflops"] * gen["time_s"] * 1e12 - 1e9) < 1.0
    overall = summary["overall"]
    assert abs(overall["time_s"] - (gen["time_s"] + summary["experience"]["time_s"])) < 1e-9
    assert abs(overall["tokens_per_s"] * overall["time_s"] - 80) < 1e-6  # generated tokens end to end
    assert "generation" in perf.format_table()


def test_metrics_logger_appends_jsonl(tmp_path):
    logger = MetricsLogger(str(tmp_path / "m.jsonl"), "ppo")
    logger.on_log(1, {"reward": 0.5})
    logger.on_log(2, {"reward": 0.7, "kl": 0.1})
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows == [{"stage": "ppo", "step": 1, "reward": 0.5}, {"stage": "ppo", "step": 2, "reward": 0.7, "kl": 0.1}]
