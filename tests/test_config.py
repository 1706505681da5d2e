"""Typed configs: flags generated from dataclass fields, YAML layering, checks naming the flag or line."""

import dataclasses
from typing import List, Literal, Optional

import pytest

from minichatgpt.config import (LENGTH, POSITIVE, POSITIVE_INT, ConfigParser, UsageError, dump_yaml, load_yaml,
                                option, parse)


@dataclasses.dataclass
class Optim:
    lr: float = option(1e-3, "peak learning rate", rule=POSITIVE)
    accumulation_steps: int = option(1, "micro-batches per step", aliases=("accimulation_steps",), rule=POSITIVE_INT)


@dataclasses.dataclass
class Run:
    pretrain: Optional[str] = option(None, "model")
    max_len: int = option(512, "tokens", rule=LENGTH)
    lr: float = option(2e-5, "peak learning rate", rule=POSITIVE)
    batch_size: int = option(8, "micro-batch", rule=POSITIVE_INT)
    loss_fn: Literal["log_sig", "log_exp"] = option("log_sig", "pairwise loss")
    greedy: bool = option(False, "greedy decoding")
    save_total_limit: Optional[int] = option(3, "keep N", rule=POSITIVE_INT)
    reward_fn: List[str] = option(help="reward functions", default_factory=list)
    clip_eps: float = option(0.2, "PPO clip", aliases=("eps_clip",), rule=POSITIVE)
    stage: Optim = option(help="a section", default_factory=Optim)

    def check(self):
        if self.greedy and self.reward_fn == ["forbidden"]:
            raise UsageError("--greedy cannot go with --reward_fn forbidden")


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_flags_come_from_fields_with_aliases_and_defaults():
    cfg = parse(Run, ["--lr", "0.5", "--eps_clip", "0.1", "--greedy"])
    assert (cfg.lr, cfg.clip_eps, cfg.greedy) == (0.5, 0.1, True)
    assert (cfg.max_len, cfg.batch_size, cfg.stage.lr, cfg.reward_fn) == (512, 8, 1e-3, [])
    assert parse(Run, ["--no-greedy"]).greedy is False


def test_help_shows_each_default():
    text = ConfigParser(Run).format_help()
    assert "(default: 512)" in text and "--eps_clip" in text and "--config" in text
    assert "--stage" not in text  # sections are set in YAML only


def test_list_optional_and_choice_flags():
    cfg = parse(Run, ["--reward_fn", "a.py:f", "b:g", "--reward_fn", "c:h", "--save_total_limit", "none"])
    assert cfg.reward_fn == ["a.py:f", "b:g", "c:h"] and cfg.save_total_limit is None
    with pytest.raises(SystemExit) as err:
        parse(Run, ["--loss_fn", "hinge"])
    assert err.value.code == 2


def test_yaml_under_flags_and_preset_under_yaml(tmp_path):
    path = write(tmp_path, "lr: 1e-3\nbatch_size: 4\nstage:\n  lr: 0.25\n  accimulation_steps: 2\n")
    cfg = parse(Run, ["--config", path, "--lr", "0.2"])
    # YAML 1.1 reads 1e-3 as a string: it still becomes a float; the section takes the old spelling too
    assert (cfg.lr, cfg.batch_size, cfg.stage.lr, cfg.stage.accumulation_steps) == (0.2, 4, 0.25, 2)
    preset = lambda values: {"batch_size": 32, "max_len": 64} if values.get("pretrain") is None else {}
    cfg = parse(Run, ["--config", path], preset=preset)
    assert (cfg.batch_size, cfg.max_len, cfg.lr) == (4, 64, 1e-3)  # the file wins over the preset
    assert parse(Run, ["--pretrain", "x"], preset=preset).max_len == 512


def test_rules_name_the_flag(tmp_path):
    with pytest.raises(UsageError, match=r"--lr must be a finite number > 0, got -1\.0"):
        parse(Run, ["--lr", "-1"])
    with pytest.raises(UsageError, match=r"--lr must be a finite number > 0, got nan"):
        parse(Run, ["--lr", "nan"])
    with pytest.raises(UsageError, match=r"--eps_clip must be a finite number > 0, got 0\.0"):
        parse(Run, ["--eps_clip=0"])  # the spelling the user wrote
    with pytest.raises(UsageError, match=r"--accumulation_steps must be an integer >= 1, got 0"):
        parse(Run, ["--config", write(tmp_path, "stage:\n  accumulation_steps: 0\n")])
    with pytest.raises(UsageError, match="--greedy cannot go with --reward_fn forbidden"):
        parse(Run, ["--greedy", "--reward_fn", "forbidden"])


@pytest.mark.parametrize("text, message", [
    ("lr: 0.1\nbtach_size: 4\n", r"run\.yaml, line 2: btach_size is not a field of this command \(did you mean 'batch_size'\?\)"),
    ("batch_size: four\n", r"line 1: batch_size must be an integer, got 'four'"),
    ("batch_size: 2.5\n", r"line 1: batch_size must be an integer"),
    ("loss_fn: hinge\n", r"line 1: loss_fn must be one of 'log_sig', 'log_exp'"),
    ("greedy: 1\n", r"line 1: greedy must be true or false"),
    ("stage: 3\n", r"line 1: stage must be a section"),
    ("stage:\n  lrr: 1\n", r"line 2: stage\.lrr is not a field"),
    ("lr: [1, 2\n", r"run\.yaml, line \d+: not valid YAML"),
    ("- 1\n- 2\n", r"expected a mapping"),
])
def test_bad_yaml_names_file_and_line(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        parse(Run, ["--config", write(tmp_path, text)])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="--config .*nope.yaml.* cannot be read"):
        parse(Run, ["--config", str(tmp_path / "nope.yaml")])


def test_dumped_config_alone_reproduces_the_run(tmp_path):
    cfg = parse(Run, ["--lr", "0.3", "--reward_fn", "a:b", "--greedy", "--save_total_limit", "none", "--loss_fn",
                      "log_exp", "--config", write(tmp_path, "stage:\n  lr: 0.7\n", "in.yaml")])
    path = str(tmp_path / "config.yaml")
    dump_yaml(cfg, path, "rm")
    assert open(path).readline().startswith("# Resolved configuration of `minichatgpt rm`")
    assert parse(Run, ["--config", path]) == cfg
    assert load_yaml(Run, path)["stage.lr"] == 0.7
