"""From a command line (and a ``--config`` YAML file) to a stage's or the pipeline's config dataclass.

Layering, later wins: field defaults < the built-in task's sizes (a stage with neither a model nor data)
< for the pipeline, what its top-level fields give every stage < the YAML file < command-line flags
(and a pipeline's ``--{stage}_args``).
"""

import os
import shlex
from typing import Any, Callable, Dict, List, Optional

from ..config import ConfigParser, UsageError, dump_yaml, field_defaults
from ..functional_rl import ADVANTAGE_ESTIMATORS
from .configs import DATA_FIELD, DEMO, STAGES
from .configs_pipeline import SECTIONS, PipelineConfig
from .configs_rl import RL_DATA_FIELD, RL_DEMO, RL_STAGES

# Every stage command's config, built-in sizes and data flag (the pipeline's stages and the others).
COMMAND_CONFIGS = {**STAGES, **RL_STAGES}
COMMAND_DEMO = {**DEMO, **RL_DEMO}
COMMAND_DATA = {**DATA_FIELD, **RL_DATA_FIELD}

# Pipeline fields that every stage takes as its own (unless its section sets them).
SHARED = ("strategy", "seed", "skip_invalid_rows", "save_interval", "save_total_limit", "report_to", "log_level",
          "precision", "save_dtype", "attn_implementation", "trust_remote_code", "deepspeed_config")
# The pipeline's data field that each section reads (DPO learns from the reward model's pairs).
PIPELINE_DATA = {"sft": "sft_dataset", "rm": "rm_dataset", "ppo": "prompt_dataset", "dpo": "rm_dataset",
                 "grpo": "prompt_dataset"}


def demo_preset(stage: str) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """The built-in task's sizes for ``stage`` when neither ``--pretrain`` nor its data flag is given."""
    def preset(values: Dict[str, Any]) -> Dict[str, Any]:
        builtin = values.get("pretrain") is None and values.get(COMMAND_DATA[stage]) is None
        return dict(COMMAND_DEMO[stage]) if builtin else {}

    return preset


def stage_parser(stage: str, prog: Optional[str] = None) -> ConfigParser:
    cls = COMMAND_CONFIGS[stage]
    epilog = (f"With neither --pretrain nor --{COMMAND_DATA[stage]} the built-in demo runs, with defaults "
              f"{COMMAND_DEMO[stage]}.")
    return ConfigParser(cls, demo_preset(stage), prog=prog, description=cls.__doc__, epilog=epilog)


class PipelineParser(ConfigParser):
    """``minichatgpt pipeline``: the stages' sections come from the YAML file and ``--{stage}_args``."""

    def __init__(self, prog: Optional[str] = None):
        super().__init__(PipelineConfig, pipeline_preset, prog=prog, description=PipelineConfig.__doc__)

    def given_values(self, args: Optional[List[str]] = None) -> Dict[str, Any]:
        values = super().given_values(args)
        for stage in SECTIONS:
            extra = values.get(f"{stage}_args", "")
            values.update({f"{stage}.{k}": v for k, v in parse_stage_args(stage, extra).items()})
        return values

    def parse_args(self, args=None, namespace=None) -> PipelineConfig:
        config = super().parse_args(args)
        object.__setattr__(config, "_section_values", {k: v for k, v in self.given.items() if "." in k})
        return config


def parse_stage_args(stage: str, extra: str) -> Dict[str, Any]:
    """The flags of a pipeline's ``--{stage}_args`` string as dotted-free values; errors name that flag."""
    flag = f"--{stage}_args"
    try:
        argv = shlex.split(extra)
    except ValueError as err:
        raise UsageError(f"{flag} {extra!r} cannot be split into flags: {err}") from None
    parser = stage_parser(stage)

    def error(message: str):
        raise UsageError(f"{flag} {extra!r}: {message}")

    parser.error = error
    try:
        return parser.given_values(argv)
    except UsageError as err:  # e.g. a nested --config file that cannot be read: name the flag the user typed
        if str(err).startswith(flag):
            raise
        raise UsageError(f"{flag} {extra!r}: {err}") from None


def pipeline_preset(given: Dict[str, Any]) -> Dict[str, Any]:
    """Each stage's values that the pipeline's top-level fields decide: outputs, the model each stage
    starts from, data, the reward (a trained reward model, or ``--reward_fn``), shared fields and, for the
    built-in task, its sizes."""
    top = {**field_defaults(PipelineConfig), **{k: v for k, v in given.items() if "." not in k}}
    out = top["output_dir"]
    sft_dir, rm_dir = os.path.join(out, "sft"), None if top["reward_fn"] else os.path.join(out, "rm")
    rl = {"pretrain": sft_dir, "lora_rank": top["lora_rank"]}
    starts = {"sft": {"pretrain": top["pretrain"], "lora_rank": top["lora_rank"]},
              "rm": {"pretrain": sft_dir},
              "ppo": {**rl, "rm_pretrain": rm_dir, "reward_fn": list(top["reward_fn"])},
              "dpo": dict(rl),
              "grpo": {**rl, "rm_pretrain": rm_dir, "reward_fn": list(top["reward_fn"]),
                       **({"algo": top["algo"]} if top["algo"] in ADVANTAGE_ESTIMATORS else {})}}
    values: Dict[str, Any] = {}
    for stage in SECTIONS:
        data = given.get(f"{stage}.{COMMAND_DATA[stage]}", top[PIPELINE_DATA[stage]])
        stage_values = dict(COMMAND_DEMO[stage]) if top["pretrain"] is None and data is None else {}
        stage_values.update({name: top[name] for name in SHARED}, **starts[stage])
        stage_values.update({COMMAND_DATA[stage]: data, "save_path": os.path.join(out, stage),
                             "metrics_path": os.path.join(out, "metrics.jsonl"),
                             "resume": "auto" if top["resume"] else None})
        values.update({f"{stage}.{name}": value for name, value in stage_values.items()})
    return values


def pipeline_values_for_ppo(values: Dict[str, Any]) -> Dict[str, Any]:
    """``minichatgpt ppo`` without an SFT model runs the pipeline: the PPO values given, as the pipeline's
    (output directory, seed, strategy, prompts, LoRA rank) and its PPO section's (everything else)."""
    renames = {"save_path": "output_dir", "prompt_path": "prompt_dataset",
               **{name: name for name in ("seed", "strategy", "lora_rank", "precision", "save_dtype",
                                          "attn_implementation", "deepspeed_config")}}
    pipeline = {renames[k]: v for k, v in values.items() if k in renames}
    pipeline.update({f"ppo.{k}": v for k, v in values.items() if k not in renames})
    return pipeline


def write_pipeline_config(config: PipelineConfig, path: str) -> None:
    """The pipeline's top-level fields and what its sections set explicitly: rerunning it recomputes the
    rest the same way, and a top-level flag given with it still reaches every stage. (Each stage writes
    its complete configuration into its own directory.)"""
    sections: Dict[str, Dict[str, Any]] = {}
    for key, value in getattr(config, "_section_values", {}).items():
        stage, name = key.split(".", 1)
        sections.setdefault(stage, {})[name] = value
    top = {k: getattr(config, k) for k in field_defaults(PipelineConfig) if k not in SECTIONS and not k.endswith("_args")}
    dump_yaml({**top, **sections}, path, "pipeline")
