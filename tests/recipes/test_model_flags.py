"""``--precision``, ``--save_dtype``, ``--attn_implementation``, ``--trust_remote_code`` and ``--grad_checkpoint``
as the recipes read them."""

import argparse
import json
import logging

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from minichatgpt import demo
from minichatgpt.recipes import pipeline, ppo, sft
from minichatgpt.recipes.checks import UsageError
from minichatgpt.recipes.model_flags import precision_problem, rounded_adapter_warning, strategy_options


def _saved_dtypes(directory) -> set:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        return {f.get_slice(name).get_dtype() for name in f.keys()}


@pytest.fixture
def sft_data(tmp_path):
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(demo.sft_records(16)))
    return data


def test_bf16_sft_saves_the_source_dtype_by_default_and_save_dtype_on_request(tiny_model_dirs, sft_data, tmp_path):
    common = ["--pretrain", tiny_model_dirs["llama"], "--dataset", str(sft_data), "--batch_size", "8",
              "--max_len", "48", "--precision", "bf16", "--eval_ratio", "0"]
    sft.main(common + ["--save_path", str(tmp_path / "auto")])
    assert _saved_dtypes(tmp_path / "auto") == {"F32"}  # the tiny model was stored in float32
    sft.main(common + ["--save_path", str(tmp_path / "bf16"), "--save_dtype", "bf16"])
    assert _saved_dtypes(tmp_path / "bf16") == {"BF16"}
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    # Starting from the bf16 checkpoint, "auto" writes bf16 again (the model trained on float32 masters).
    sft.main(["--pretrain", str(tmp_path / "bf16")] + common[2:] + ["--save_path", str(tmp_path / "again")])
    assert _saved_dtypes(tmp_path / "again") == {"BF16"}


@pytest.fixture
def logged():
    """Messages of the ``minichatgpt`` logger (it does not propagate to pytest's handler) while the test runs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("minichatgpt").addHandler(handler)
    yield records
    logging.getLogger("minichatgpt").removeHandler(handler)


def test_bf16_training_from_a_merged_lora_checkpoint_warns(tiny_model_dirs, sft_data, tmp_path, logged):
    """A LoRA run saves merged weights plus adapter/; starting a bf16 run from that directory is warned about
    (its delta is rounded away in bf16 weights), a fp32 run and a bf16 run from a plain directory are not."""
    common = ["--dataset", str(sft_data), "--batch_size", "8", "--max_len", "48", "--eval_ratio", "0"]
    lora = tmp_path / "lora"
    sft.main(["--pretrain", tiny_model_dirs["llama"], "--lora_rank", "4", "--save_path", str(lora)] + common)
    assert (lora / "adapter").is_dir()
    for source, precision, warns in ((lora, "bf16", True), (lora, "fp32", False),
                                     (tiny_model_dirs["llama"], "bf16", False)):
        logged.clear()
        sft.main(["--pretrain", str(source), "--precision", precision, "--save_path", str(tmp_path / "out")] + common)
        warned = [r.getMessage() for r in logged if "LoRA adapters merged" in r.getMessage()]
        assert warned == ([f"--precision bf16: --pretrain {lora} holds LoRA adapters merged into the weights; "
                           "bf16 weights round much of that small fine-tuning delta away (a LoRA reward model's "
                           "held-out margin halved, README 'Evaluating models'), so this run starts from, or is "
                           "scored by, a model partly back at its base. Use --precision fp32 with checkpoints "
                           "fine-tuned with LoRA"] if warns else [])


def test_the_warning_names_each_flag_that_points_at_a_merged_fine_tune(tmp_path):
    for name in ("sft", "rm"):
        (tmp_path / name / "adapter").mkdir(parents=True)
    args = argparse.Namespace(precision="bf16", pretrain=str(tmp_path / "sft"), rm_pretrain=str(tmp_path / "rm"))
    assert f"--pretrain {tmp_path / 'sft'}, --rm_pretrain {tmp_path / 'rm'} hold LoRA" in rounded_adapter_warning(args)
    args.rm_pretrain = str(tmp_path)  # no adapter/ folder
    assert f"--pretrain {tmp_path / 'sft'} holds LoRA" in rounded_adapter_warning(args)
    args.precision = "fp16"  # 8x finer than bf16: not warned about in training
    assert rounded_adapter_warning(args) is None


def test_flash_attention_without_flash_attn_is_a_usage_error(tiny_model_dirs, sft_data):
    with pytest.raises(UsageError, match="flash_attn"):
        sft.main(["--pretrain", tiny_model_dirs["llama"], "--dataset", str(sft_data),
                  "--attn_implementation", "flash_attention_2", "--precision", "bf16"])


def test_gemini_has_no_fp32():
    args = argparse.Namespace(precision="fp32", strategy="colossalai_gemini", attn_implementation="sdpa")
    assert "bf16 or fp16" in precision_problem(args)
    assert precision_problem(argparse.Namespace(precision="bf16", strategy="colossalai_gemini")) is None


def test_every_ppo_model_gets_grad_checkpoint_and_attention_flags(tiny_model_dirs):
    args = ppo.build_parser().parse_args(["--pretrain", tiny_model_dirs["llama"], "--grad_checkpoint",
                                          "--attn_implementation", "eager", "--trust_remote_code"])
    models = ppo.build_models(args)
    assert all(m is not None for m in models)
    for model in models:
        assert model.model.is_gradient_checkpointing
        assert model.model.config._attn_implementation == "eager"


def test_pipeline_passes_precision_and_model_flags_to_every_stage():
    config = pipeline.build_parser().parse_args(["--precision", "bf16", "--save_dtype", "fp16",
                                                 "--attn_implementation", "eager", "--trust_remote_code"])
    for stage in ("sft", "rm", "ppo", "dpo", "grpo"):
        section = getattr(config, stage)
        assert (section.precision, section.save_dtype, section.attn_implementation, section.trust_remote_code) == \
            ("bf16", "fp16", "eager", True), stage


def test_deepspeed_config_file_is_merged_over_the_generated_one(tmp_path):
    from minichatgpt.trainer.strategies.deepspeed import DeepSpeedOptions

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000}, "wall_clock_breakdown": True}))
    args = argparse.Namespace(strategy="deepspeed_zero2", precision="bf16", deepspeed_config=str(path))
    assert precision_problem(args) is None
    options = strategy_options(args)
    config = DeepSpeedOptions(stage=2, precision=options["precision"], config=options["config"]).ds_config(True)
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}  # merged, stage kept
    assert config["wall_clock_breakdown"] is True and config["bf16"] == {"enabled": True}
    assert "deepspeed_* strategies only" in precision_problem(argparse.Namespace(strategy="ddp",
                                                                                 deepspeed_config=str(path)))
    path.write_text("[1, 2]")
    assert "JSON object" in precision_problem(args)


def test_frozen_weights_load_in_bf16_under_a_bf16_replicated_strategy(tiny_model_dirs):
    from minichatgpt.recipes.model_flags import model_options

    bf16 = argparse.Namespace(precision="bf16", strategy="naive")
    assert model_options(bf16)["dtype"] == torch.bfloat16  # reference, reward model, a LoRA base
    assert model_options(bf16, fully_trained=True)["dtype"] is None  # float32, the masters' precision
    assert model_options(argparse.Namespace(precision="bf16", strategy="fsdp"))["dtype"] is None
    assert model_options(argparse.Namespace(precision="fp32", strategy="naive"))["dtype"] is None
    args = ppo.build_parser().parse_args(["--pretrain", tiny_model_dirs["llama"], "--precision", "bf16",
                                          "--lora_rank", "4", "--no_shared_reference"])
    actor, critic, reward_model, reference = ppo.build_models(args)
    for model in (actor, critic, reward_model, reference):
        frozen = {p.dtype for p in model.model.parameters() if not p.requires_grad}
        assert frozen == {torch.bfloat16}
