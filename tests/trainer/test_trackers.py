"""Experiment trackers behind MetricsLogger (``--report_to``)."""

import sys
import types

import pytest

from minichatgpt.trainer import MetricsLogger
from minichatgpt.trainer.trackers import build_trackers


def fake_module(monkeypatch, name, calls):
    """A stand-in package recording every call, for trackers whose real package is not installed here."""
    module = types.ModuleType(name)

    def recorder(function):
        return lambda *args, **kwargs: calls.append((function, args, kwargs))

    for function in ("set_experiment", "start_run", "log_params", "log_metrics", "end_run", "init", "log", "finish"):
        setattr(module, function, recorder(function))
    monkeypatch.setitem(sys.modules, name, module)


def test_wandb_offline_run_receives_stage_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tracker,) = build_trackers(["wandb"], "sft", str(tmp_path / "run" / "sft"), {"lr": 0.1, "tags": ["x"]})
    logger = MetricsLogger(str(tmp_path / "m.jsonl"), "sft", trackers=[tracker])
    logger.on_log(1, {"loss": 2.5})
    logger.on_log(2, {"loss": 1.5})
    run = tracker.run
    assert run.summary["sft/loss"] == 1.5 and run.config["lr"] == 0.1 and "tags" not in run.config
    assert run.name == "sft" and run.group == "run"
    logger.on_fit_end(None)
    assert list((tmp_path / "run" / "sft" / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.parametrize("name", ["mlflow", "trackio"])
def test_mlflow_and_trackio_get_the_same_metrics(tmp_path, monkeypatch, name):
    calls = []
    fake_module(monkeypatch, name, calls)
    (tracker,) = build_trackers([name], "ppo", str(tmp_path / "out" / "ppo"), {"kl_coef": 0.1})
    MetricsLogger(None, "ppo", trackers=[tracker]).on_log(3, {"reward": 0.5})
    tracker.finish()
    logged = [c for c in calls if c[0] in ("log_metrics", "log")]
    assert logged == [(logged[0][0], ({"ppo/reward": 0.5},), {"step": 3})]
    assert calls[-1][0] in ("end_run", "finish")


def test_missing_tracker_package_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r'--report_to mlflow needs mlflow, which is not installed: pip install "minichatgpt\[mlflow\]"'):
        build_trackers(["mlflow"], "sft", str(tmp_path), {})
    assert build_trackers(["none"], "sft", str(tmp_path), {}) == []
    with pytest.raises(ValueError, match="unknown tracker"):
        build_trackers(["neptune"], "sft", str(tmp_path), {})
