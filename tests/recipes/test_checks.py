"""Up-front checks: every bad flag, path or launch is one message naming the flag, and exit code 2.

Nothing here trains but one short ``--skip_invalid_rows`` run: ``checks.check_command`` parses and checks
only; the ``cli.main`` calls fail in the checks (or, for a bad data row, while the dataset is read).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minichatgpt import cli, demo
from minichatgpt.demo import build_word_tokenizer, vocabulary
from minichatgpt.nn import load_model
from minichatgpt.recipes import checks, pipeline, ppo, rm, sft
from minichatgpt.recipes.checks import UsageError, check_command

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARSERS = {"sft": sft.build_parser, "rm": rm.build_parser, "ppo": ppo.build_parser, "pipeline": pipeline.build_parser}
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "LOCAL_RANK": "0"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Default outputs (``outputs/pipeline``) resolve under a temporary directory; no torchrun variables."""
    monkeypatch.chdir(tmp_path)
    for var in TORCHRUN_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(checks.FREE_SPACE_ENV, raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dirs):
    """Paths the checks look at: a model, data files, a file in the way, a model too small for its tokenizer."""
    root = tmp_path_factory.mktemp("checks")
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demo.sft_records(8)))
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demo.preference_records(8)))
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demo.prompt_records(8)))
    (root / "blocker").write_text("a file, not a directory")
    small = root / "small-vocab"
    load_model(config={"model_type": "gpt2", "vocab_size": 10, "n_layer": 1, "n_embd": 8, "n_head": 2,
                       "n_positions": 32}).save_pretrained(small)
    build_word_tokenizer().save_pretrained(small)  # ~80 tokens for a 10-token embedding table
    big_tokenizer = root / "big-tokenizer"
    build_word_tokenizer(vocabulary() + [f"extra{i}" for i in range(200)]).save_pretrained(big_tokenizer)
    no_weights = root / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    no_tokenizer = root / "no-tokenizer"
    load_model(config={"model_type": "gpt2", "vocab_size": 100, "n_layer": 1, "n_embd": 8, "n_head": 2,
                       "n_positions": 32}).save_pretrained(no_tokenizer)
    return {"model": tiny_model_dirs["gpt2"], "sft": str(root / "sft.jsonl"), "pairs": str(root / "pairs.jsonl"),
            "prompts": str(root / "prompts.jsonl"), "blocker": str(root / "blocker"), "small": str(small),
            "big_tokenizer": str(big_tokenizer), "no_weights": str(no_weights), "no_tokenizer": str(no_tokenizer),
            "out": str(root / "out")}


def usage_error(command, argv) -> str:
    with pytest.raises(UsageError) as error:
        check_command(command, argv)
    return str(error.value)


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command,flag,value", [
    ("sft", "--batch_size", "0"), ("sft", "--max_epochs", "-1"), ("sft", "--lr", "0"), ("sft", "--lr", "nan"),
    ("sft", "--warmup_ratio", "1.5"), ("sft", "--eval_ratio", "1"), ("sft", "--max_len", "1"),
    ("sft", "--accumulation_steps", "0"), ("sft", "--lora_rank", "-2"), ("sft", "--log_interval", "0"),
    ("sft", "--max_datasets_size", "0"), ("sft", "--seed", "-1"), ("sft", "--save_total_limit", "0"),
    ("rm", "--max_nonfinite_steps", "0"), ("rm", "--weight_decay", "-0.1"),
    ("rm", "--max_grad_norm", "inf"), ("ppo", "--kl_coef", "-0.1"), ("ppo", "--ptx_coef", "2"),
    ("ppo", "--gamma", "1.1"), ("ppo", "--lam", "-0.5"), ("ppo", "--eps_clip", "0"), ("ppo", "--top_p", "0"),
    ("ppo", "--temperature", "0"), ("ppo", "--train_batch_size", "0"), ("ppo", "--max_new_tokens", "0"),
    ("ppo", "--actor_lr", "-1e-5"), ("ppo", "--target_kl", "0"), ("ppo", "--max_input_len", "1"),
    ("pipeline", "--eval_prompts", "0"), ("pipeline", "--lora_rank", "-1"),
])
def test_out_of_range_numbers_name_the_flag(command, flag, value):
    message = usage_error(command, [f"{flag}={value}"])  # "=": argparse reads "-1e-5" as an option
    assert message.startswith(f"{flag} must be ") and repr(float(message.rsplit("got ", 1)[1])) == repr(float(value))


def test_valid_commands_pass(files):
    check_command("sft", ["--pretrain", files["model"], "--dataset", files["sft"], "--save_path", files["out"]])
    check_command("rm", ["--pretrain", files["model"], "--dataset", files["pairs"], "--loss_fn", "log_exp"])
    check_command("ppo", ["--pretrain", files["model"], "--rm_pretrain", files["model"], "--prompt_path",
                          files["prompts"], "--pretrain_dataset", files["sft"], "--greedy", "--temperature", "0"])
    check_command("pipeline", ["--output_dir", files["out"], "--strategy", "ddp", "--ppo_args", "--max_epochs 2"])
    check_command("sft", ["--dataset", "org/some-hub-dataset"])  # a hub name is read (or refused) by the data layer


def test_update_timesteps_beyond_the_run_is_refused():
    message = usage_error("ppo", ["--num_episodes", "1", "--max_timesteps", "2", "--update_timesteps", "3"])
    assert "--update_timesteps 3" in message and "no PPO update" in message


def test_resume_needs_save_path_and_an_existing_directory(files, tmp_path):
    assert usage_error("sft", ["--resume", "auto"]).startswith("--resume 'auto' needs --save_path")
    message = usage_error("rm", ["--save_path", files["out"], "--resume", str(tmp_path / "nope")])
    assert message.startswith("--resume") and "not a directory" in message
    check_command("sft", ["--save_path", files["out"], "--resume", "auto"])


def test_rm_path_with_lora_is_refused_before_models_are_built(files, tmp_path):
    state = tmp_path / "rm.pt"
    state.write_bytes(b"")
    message = usage_error("ppo", ["--pretrain", files["model"], "--rm_path", str(state), "--lora_rank", "4"])
    assert message.startswith("--rm_path") and "LoRA" in message


# ---------------------------------------------------------------------------------------------
# strategy and launch
# ---------------------------------------------------------------------------------------------
def test_strategy_needs_its_package(monkeypatch):
    monkeypatch.setattr(checks, "installed_version", lambda package: None)
    message = usage_error("sft", ["--strategy", "deepspeed_zero2"])
    assert message.startswith("--strategy deepspeed_zero2") and "pip install" in message
    monkeypatch.setattr(checks, "installed_version", lambda package: "0.10.0")
    assert "found 0.10.0" in usage_error("sft", ["--strategy", "deepspeed_zero3"])


def test_colossalai_needs_cuda_its_package_and_torchrun(monkeypatch):
    monkeypatch.setattr(checks.torch.cuda, "is_available", lambda: False)
    assert "CUDA" in usage_error("rm", ["--strategy", "colossalai_gemini"])
    monkeypatch.setattr(checks.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(checks.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(checks, "installed_version", lambda package: None)
    assert "colossalai is not installed" in usage_error("rm", ["--strategy", "colossalai_zero2"])
    monkeypatch.setattr(checks, "installed_version", lambda package: "0.5.0")
    assert "torchrun" in usage_error("rm", ["--strategy", "colossalai_zero2"])


def test_launch_environment():
    checks.check_strategy("ddp", env={})  # a plain run: a group of one
    checks.check_strategy("fsdp", env=TORCHRUN_ENV)
    with pytest.raises(UsageError, match="--strategy ddp.*MASTER_ADDR, MASTER_PORT"):
        checks.check_strategy("ddp", env={"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="--strategy naive runs one process, but WORLD_SIZE=2"):
        checks.check_strategy("naive", env=TORCHRUN_ENV)
    with pytest.raises(UsageError, match="WORLD_SIZE='two'"):
        checks.check_strategy("ddp", env=dict(TORCHRUN_ENV, WORLD_SIZE="two"))


def test_local_rank_beyond_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(checks.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(checks.torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UsageError, match="LOCAL_RANK=3 but only 2 CUDA"):
        checks.check_strategy("ddp", env=dict(TORCHRUN_ENV, WORLD_SIZE="4", LOCAL_RANK="3"))


# ---------------------------------------------------------------------------------------------
# models, tokenizers, data, outputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command,flag,value,expected", [
    ("sft", "--pretrain", "./no/such/model", "does not exist"),
    ("sft", "--pretrain", "/no/such/model", "does not exist"),
    ("sft", "--pretrain", "missing.gguf", "does not exist"),
    ("sft", "--pretrain", "no-such-org/no-such-model", "Hugging Face hub"),  # HF_HUB_OFFLINE=1 (conftest)
    ("rm", "--tokenizer", "./no/such/tokenizer", "does not exist"),
    ("ppo", "--rm_path", "./no/such/rm.pt", "does not exist"),
])
def test_missing_models_name_the_flag(files, command, flag, value, expected):
    argv = [flag, value] if flag == "--pretrain" else ["--pretrain", files["model"], flag, value]
    message = usage_error(command, argv)
    assert message.startswith(f"{flag} {value!r}") and expected in message


def test_rm_pretrain_missing_and_model_directories_that_cannot_load(files):
    assert usage_error("ppo", ["--pretrain", files["model"], "--rm_pretrain", "./gone"]).startswith("--rm_pretrain")
    assert "is a file" in usage_error("sft", ["--pretrain", files["sft"]])
    assert "no model weights" in usage_error("sft", ["--pretrain", files["no_weights"]])
    assert "no tokenizer files" in usage_error("sft", ["--pretrain", files["no_tokenizer"]])
    assert "is a directory" in usage_error("ppo", ["--pretrain", files["model"], "--rm_path", files["model"]])
    assert "is a file" in usage_error("rm", ["--pretrain", files["model"], "--tokenizer", files["sft"]])
    assert "NUL" in usage_error("sft", ["--save_path", "out\0put"])


def test_tokenizer_larger_than_the_model_vocabulary(files):
    message = usage_error("sft", ["--pretrain", files["small"]])
    assert message.startswith(f"--pretrain {files['small']!r}") and "vocab_size 10" in message
    message = usage_error("rm", ["--pretrain", files["model"], "--tokenizer", files["big_tokenizer"]])
    assert message.startswith("--tokenizer") and "--pretrain" in message
    message = usage_error("ppo", ["--pretrain", files["model"], "--rm_pretrain", files["small"]])
    assert "--rm_pretrain" in message and "vocab_size 10" in message


def test_special_token_ids_beyond_the_vocabulary():
    class Tokenizer:
        pad_token_id, eos_token_id = 3, 12

        def __len__(self):
            return 8

    config = argparse.Namespace(vocab_size=10)
    with pytest.raises(UsageError, match="--tokenizer 't': its eos token id 12 is not below the vocab_size 10"):
        checks.check_vocab("--tokenizer", "t", Tokenizer(), "--pretrain", "m", config)


@pytest.mark.parametrize("command,flag", [("sft", "--dataset"), ("rm", "--eval_dataset"), ("ppo", "--prompt_path"),
                                          ("ppo", "--pretrain_dataset"), ("pipeline", "--sft_dataset"),
                                          ("pipeline", "--rm_dataset"), ("pipeline", "--prompt_dataset")])
def test_missing_data_files_name_the_flag(command, flag):
    assert usage_error(command, [flag, "./data/missing.jsonl"]) == f"{flag} './data/missing.jsonl': no such file"
    assert usage_error(command, [flag, ""]).startswith(f"{flag} is empty")


def test_unwritable_or_full_output_directories(files, monkeypatch):
    blocked = os.path.join(files["blocker"], "out")
    assert usage_error("sft", ["--save_path", blocked]).startswith(f"--save_path {blocked!r} cannot be created")
    assert usage_error("rm", ["--save_path", files["blocker"]]).endswith("is a file, not a directory")
    assert usage_error("pipeline", ["--output_dir", blocked]).startswith("--output_dir")
    assert usage_error("ppo", ["--metrics_path", os.path.join(blocked, "m.jsonl")]).startswith("--metrics_path")
    monkeypatch.setenv(checks.FREE_SPACE_ENV, str(10 ** 12))  # a petabyte
    message = usage_error("sft", ["--save_path", files["out"]])
    assert message.startswith("--save_path") and "MB free" in message and checks.FREE_SPACE_ENV in message
    assert usage_error("pipeline", []).startswith("--output_dir 'outputs/pipeline'")
    monkeypatch.setenv(checks.FREE_SPACE_ENV, "0")
    check_command("sft", ["--save_path", files["out"]])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        assert "is not writable" in usage_error("sft", ["--save_path", str(tmp_path / "out")])
    finally:
        tmp_path.chmod(0o700)


def test_free_space_estimate_counts_float32_parameters(files, monkeypatch):
    model = load_model(pretrained=files["model"])
    n_params = sum(t.numel() for t in model.state_dict().values())  # tied weights count once in safetensors
    assert n_params * 4 >= checks.saved_model_bytes(files["model"]) >= sum(p.numel() for p in model.parameters()) * 4
    assert checks.saved_model_bytes("org/hub-name") == 0
    assert checks.required_free_bytes(None, copies=4) == checks.MIN_FREE_MB * 2 ** 20
    monkeypatch.setenv(checks.FREE_SPACE_ENV, "1.5")
    assert checks.required_free_bytes(files["model"], copies=4) == int(1.5 * 2 ** 20)
    monkeypatch.setenv(checks.FREE_SPACE_ENV, "lots")
    with pytest.raises(UsageError, match=checks.FREE_SPACE_ENV):
        checks.required_free_bytes(None, copies=1)


# ---------------------------------------------------------------------------------------------
# the pipeline checks every stage's flags before SFT starts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,extra,expected", [
    ("--sft_args", "--batch_size 0", "--batch_size must be"),
    ("--rm_args", "--loss_fn hinge", "invalid choice: 'hinge'"),
    ("--ppo_args", "--update_timesteps 1000", "no PPO update"),
    ("--ppo_args", "--max_epochs two", "invalid int value: 'two'"),
    ("--sft_args", "--no_such_flag 1", "unrecognized arguments"),
    ("--rm_args", "--max_len '64", "cannot be split"),
    ("--ppo_args", "--prompt_path ./missing.json", "no such file"),
])
def test_pipeline_stage_arguments(flag, extra, expected):
    message = usage_error("pipeline", [flag, extra])
    assert flag in message and expected in message


# ---------------------------------------------------------------------------------------------
# the command line: one line on stderr, exit code 2, no traceback
# ---------------------------------------------------------------------------------------------
def test_cli_prints_one_error_line_and_returns_2(files, capsys):
    assert cli.main(["sft", "--batch_size", "0"]) == 2
    assert capsys.readouterr().err == "minichatgpt sft: error: --batch_size must be an integer >= 1, got 0\n"
    assert cli.main(["ppo", "--pretrain", "./missing-sft"]) == 2
    assert capsys.readouterr().err.startswith("minichatgpt ppo: error: --pretrain './missing-sft' does not exist")
    assert cli.main(["pipeline", "--ppo_args", "--gamma 2"]) == 2
    assert "minichatgpt pipeline: error: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["rm", "--batch_size", "x"])  # argparse's own errors: already code 2
    assert exit_.value.code == 2 and "--batch_size" in capsys.readouterr().err


def test_cli_reports_a_bad_data_row_with_code_2(files, tmp_path, capsys):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": 3}\n')
    assert cli.main(["sft", "--pretrain", files["model"], "--dataset", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minichatgpt sft: error: ") and f"{data}:2: field 'output'" in err


def test_skip_invalid_rows_flag_reaches_the_datasets(files, tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join([json.dumps(r) for r in demo.sft_records(16)] + ["{oops", '{"instruction": 1}']))
    with pytest.warns(UserWarning, match=rf"{data}: skipped 2 invalid row\(s\)"):
        sft.main(["--pretrain", files["model"], "--dataset", str(data), "--skip_invalid_rows", "--batch_size", "8",
                  "--max_len", "32", "--eval_ratio", "0"])


def test_example_script_exits_2_without_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_sft.py"), "--lr", "-1"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2
    assert "train_sft.py: error: --lr must be a finite number > 0, got -1.0" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# fuzzing: random flag lists give exit code 2 naming a flag, or pass the checks; never a traceback
# ---------------------------------------------------------------------------------------------
def flag_actions(command):
    return [a for a in PARSERS[command]()._actions if a.option_strings and a.dest != "help"]


MALFORMED = ["abc", "", " ", "1,5", "0x10", "nan", "inf", "-inf", "1e309", "4294967296", "99999999999999999999",
             "zero9", "NAIVE", "-1", "0"]


def flag_values(action, files):
    """Mostly values of the flag's type (in range or not), sometimes malformed ones."""
    paths = [files["model"], files["sft"], files["pairs"], files["prompts"], files["out"], files["blocker"],
             os.path.join(files["blocker"], "x"), "./missing.jsonl", "/no/such/dir", "org/missing-name", "missing.gguf"]
    if action.choices:
        typed = st.sampled_from([str(choice) for choice in action.choices])  # argv holds strings (e.g. ZeRO stages 1-3)
    elif action.type is int:
        typed = st.one_of(st.integers(-3, 70).map(str), st.sampled_from(["0", "1", "2", "4294967296"]))
    elif action.type is float:
        typed = st.one_of(st.floats(-2, 3).map(repr), st.sampled_from(["0", "1", "0.5", "1e-4", "nan", "inf"]))
    else:
        typed = st.sampled_from(paths)
    return st.one_of(typed, typed, typed, st.sampled_from(MALFORMED + paths), st.text(max_size=8))


def random_argv(command, files, depth=0):
    """Lists of real flags with random or malformed values; the pipeline's ``--*_args`` nest a stage's."""
    def one(action):
        if action.nargs == 0:
            return st.just([action.option_strings[-1]])
        values = flag_values(action, files)
        if depth == 0 and action.dest in ("sft_args", "rm_args", "ppo_args"):
            stage = action.dest[:-5]
            values = st.one_of(values, random_argv(stage, files, depth + 1).map(shlex.join))
        return values.map(lambda value: [action.option_strings[-1], value])

    return st.lists(st.sampled_from(flag_actions(command)).flatmap(one), max_size=5).map(
        lambda parts: [item for part in parts for item in part])


def check_fuzzed(command, argv, capsys):
    """The argument list either passes the checks, or fails with code 2 and a message naming one of its flags."""
    given = {item for item in argv if item.startswith("--") and " " not in item}
    # A message may use the canonical spelling of an alias (--accimulation_steps -> --accumulation_steps).
    flags = given | {f"--{a.dest}" for a in flag_actions(command) if given & set(a.option_strings)}
    try:
        check_command(command, argv)
        return
    except SystemExit as exit_:
        assert exit_.code == 2
        message = capsys.readouterr().err
    except UsageError as error:
        message = str(error)
    assert any(flag in message for flag in flags), (argv, message)


@pytest.mark.parametrize("command", ["sft", "rm", "ppo", "pipeline"])
def test_fuzz_command_lines(command, files, capsys):
    @FUZZ
    @given(argv=random_argv(command, files))
    def run(argv):
        capsys.readouterr()
        check_fuzzed(command, argv, capsys)

    run()


@pytest.mark.parametrize("command", ["ppo", "grpo"])
def test_decode_flag_choices_and_cuda_graph_without_a_gpu(command, monkeypatch):
    assert check_command(command, ["--decode", "static"]).decode == "static"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert usage_error(command, ["--decode", "cuda_graph"]).startswith("--decode must be one of auto, dynamic, "
                                                                        "static (cuda_graph needs a CUDA device)")
    with pytest.raises(SystemExit) as exit_:
        check_command(command, ["--decode", "eager"])
    assert exit_.value.code == 2


def test_an_unreadable_config_inside_stage_args_names_the_stage_flag(tmp_path):
    """Found by the fuzzer: ``--sft_args '--config DIR'`` named only the inner --config, not the flag typed."""
    message = usage_error("pipeline", ["--sft_args", f"--config {tmp_path}"])
    assert message.startswith("--sft_args ") and "--config" in message and "cannot be read" in message
