"""The commands' configs: YAML files, resolved configs that reproduce a run, the pipeline's sections."""

import dataclasses
import glob
import os

import pytest

from minichatgpt import config as config_lib
from minichatgpt.config import UsageError, dump_yaml
from minichatgpt.recipes.arguments import PipelineParser, stage_parser, write_pipeline_config
from minichatgpt.recipes.configs import PPO_DEMO, RM_DEMO, SFT_DEMO, PPOConfig, SFTConfig
from minichatgpt.recipes.configs_pipeline import PipelineConfig, pipeline_stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "configs", "*.yaml")))


def parser_for(command: str):
    return PipelineParser() if command == "pipeline" else stage_parser(command)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_configs_load_and_pass_their_rules(path):
    command = os.path.basename(path).split("_")[0]
    config = parser_for(command).parse_args(["--config", path])
    config_lib.validate(config)
    assert config == parser_for(command).parse_args(["--config", path])


def test_there_is_a_config_per_stage_on_smollm2():
    names = {os.path.basename(p) for p in EXAMPLES}
    assert {"pipeline_demo.yaml", "sft_smollm2.yaml", "rm_smollm2.yaml", "ppo_smollm2.yaml"} <= names


def test_pipeline_demo_yaml_is_the_default_run():
    path = os.path.join(ROOT, "examples", "configs", "pipeline_demo.yaml")
    assert PipelineParser().parse_args(["--config", path]) == PipelineParser().parse_args([])


def test_old_flag_spellings_reach_the_one_field():
    config = stage_parser("ppo").parse_args(["--pretrain", "m", "--eps_clip", "0.3", "--value_clip", "0.5"])
    assert (config.clip_eps, config.value_clip_eps) == (0.3, 0.5)
    assert stage_parser("sft").parse_args(["--accimulation_steps", "4"]).accumulation_steps == 4


def test_demo_sizes_apply_only_without_model_and_data():
    assert stage_parser("sft").parse_args([]).batch_size == SFT_DEMO["batch_size"]
    assert stage_parser("sft").parse_args(["--dataset", "d.json"]).batch_size == SFTConfig.batch_size
    assert stage_parser("rm").parse_args(["--batch_size", "3"]).batch_size == 3  # a flag beats the demo size
    assert stage_parser("rm").parse_args([]).eval_ratio == RM_DEMO["eval_ratio"]
    assert stage_parser("ppo").parse_args([]).max_new_tokens == PPO_DEMO["max_new_tokens"]


@pytest.mark.parametrize("command, argv", [
    ("sft", ["--pretrain", "m", "--dataset", "d.json", "--lora_rank", "8", "--lr", "3e-4", "--grad_checkpoint"]),
    ("rm", ["--loss_fn", "log_exp", "--max_len", "77", "--save_total_limit", "2"]),
    ("ppo", ["--pretrain", "m", "--eps_clip", "0.1", "--greedy", "--target_kl", "0.5", "--top_k", "5"]),
])
def test_a_written_stage_config_alone_reproduces_the_run(tmp_path, command, argv):
    config = stage_parser(command).parse_args(argv)
    path = str(tmp_path / "config.yaml")
    dump_yaml(config, path, command)
    assert stage_parser(command).parse_args(["--config", path]) == config
    assert stage_parser(command).parse_args(["--config", path, "--seed", "7"]).seed == 7  # flags still win


def test_pipeline_sections_flags_and_written_config(tmp_path):
    section_file = tmp_path / "run.yaml"
    section_file.write_text("seed: 3\nlora_rank: 4\nsft:\n  max_epochs: 2\n  lora_rank: 0\nppo:\n  kl_coef: 0.3\n")
    config = PipelineParser().parse_args(["--config", str(section_file), "--output_dir", str(tmp_path / "out"),
                                          "--ppo_args", "--kl_coef 0.4 --eps_clip 0.15"])
    out = str(tmp_path / "out")
    assert (config.sft.max_epochs, config.sft.lora_rank, config.ppo.lora_rank) == (2, 0, 4)  # a section beats the top
    assert (config.ppo.kl_coef, config.ppo.clip_eps) == (0.4, 0.15)  # --ppo_args beat the file's section
    assert {config.sft.seed, config.rm.seed, config.ppo.seed} == {3}
    assert (config.rm.pretrain, config.ppo.pretrain, config.ppo.rm_pretrain, config.sft.save_path) == (
        os.path.join(out, "sft"), os.path.join(out, "sft"), os.path.join(out, "rm"), os.path.join(out, "sft"))
    written = str(tmp_path / "config.yaml")
    write_pipeline_config(config, written)
    again = PipelineParser().parse_args(["--config", written])
    assert again.sft == config.sft and again.rm == config.rm and again.ppo == config.ppo
    reseeded = PipelineParser().parse_args(["--config", written, "--seed", "9"])
    assert {reseeded.sft.seed, reseeded.rm.seed, reseeded.ppo.seed} == {9}  # the top level still reaches stages


def test_pipeline_section_errors_name_the_stage(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rm:\n  loss_fn: hinge\n")
    with pytest.raises(UsageError, match=r"bad\.yaml, line 2: rm\.loss_fn must be one of 'log_sig', 'log_exp'"):
        PipelineParser().parse_args(["--config", str(bad)])
    bad.write_text("ppo:\n  top_p: 0\n")
    from minichatgpt.recipes.checks import validate_pipeline

    with pytest.raises(UsageError, match=r"the ppo stage \(its section of the configuration\): --top_p must be"):
        validate_pipeline(PipelineParser().parse_args(["--config", str(bad)]))


def test_every_field_has_help_and_the_trainer_names():
    for cls in (SFTConfig, PPOConfig, PipelineConfig):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
    names = {f.name for f in dataclasses.fields(PPOConfig)}
    assert {"clip_eps", "value_clip_eps", "kl_coef", "gamma", "lam"} <= names and "eps_clip" not in names


@pytest.mark.parametrize("algo, reward_fn, stages", [
    ("ppo", [], ("sft", "rm", "ppo")), ("ppo", ["m:f"], ("sft", "ppo")), ("dpo", [], ("sft", "dpo")),
    ("rloo", [], ("sft", "rm", "grpo")), ("grpo", ["m:f"], ("sft", "grpo")), ("reinforce_pp", [], ("sft", "rm", "grpo"))])
def test_each_algorithm_runs_its_stages(algo, reward_fn, stages):
    assert pipeline_stages(algo, reward_fn) == stages


def test_pipeline_wires_the_algorithm_stage(tmp_path):
    out = str(tmp_path / "out")
    rloo = PipelineParser().parse_args(["--algo", "rloo", "--output_dir", out, "--lora_rank", "4"])
    assert (rloo.grpo.algo, rloo.grpo.rm_pretrain, rloo.grpo.reward_fn) == ("rloo", os.path.join(out, "rm"), [])
    assert (rloo.grpo.pretrain, rloo.grpo.lora_rank, rloo.grpo.save_path) == (
        os.path.join(out, "sft"), 4, os.path.join(out, "grpo"))
    rule = "minichatgpt.demo:hidden_rule_reward"
    grpo = PipelineParser().parse_args(["--algo", "grpo", "--reward_fn", rule, "--output_dir", out])
    assert (grpo.grpo.rm_pretrain, grpo.grpo.reward_fn, grpo.ppo.reward_fn) == (None, [rule], [rule])
    dpo = PipelineParser().parse_args(["--algo", "dpo", "--rm_dataset", "pairs.json", "--dpo_args", "--beta 0.2"])
    assert (dpo.dpo.dataset, dpo.dpo.beta, dpo.dpo.pretrain) == ("pairs.json", 0.2, "outputs/pipeline/sft")
    from minichatgpt.recipes.checks import check_command

    with pytest.raises(UsageError, match="--algo dpo learns from preference pairs only"):
        check_command("pipeline", ["--algo", "dpo", "--reward_fn", rule, "--output_dir", out])
