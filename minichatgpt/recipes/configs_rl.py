"""The configuration of the stages beyond PPO: ``minichatgpt dpo`` (``DPOConfig``) and ``minichatgpt grpo``
(``GRPOConfig``), declared like ``configs``'s, with the built-in task's sizes for each."""

import dataclasses
from typing import Any, Dict, Optional

from ..config import LENGTH, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, UsageError, option
from ..functional_rl import ADVANTAGE_ESTIMATORS, AGGREGATIONS, PREFERENCE_LOSSES
from ..nn.cuda_decode import DECODE_MODES
from ..trainer.configs import DECODE, DECODE_HELP
from ..trainer.dpo import REFERENCES
from .configs import TOP_P, RunConfig, SupervisedConfig
from .placement import ActorPlacement, check_placement
from .reward_config import RewardFunctionFields, check_reward_functions

HALF_OPEN_UNIT = ("a number in [0, 0.5)", lambda v: 0 <= v < 0.5)


@dataclasses.dataclass
class DPOConfig(SupervisedConfig):
    """``minichatgpt dpo``: preference optimization on ranked pairs, no reward model (DPO, IPO, SimPO)."""
    dataset: Optional[str] = option(None, "preference pairs (the reward model's formats); default: the built-in pairs")
    lr: float = option(1e-6, "peak learning rate (AdamW)", rule=POSITIVE)
    loss_type: str = option("sigmoid", "sigmoid: DPO (arXiv:2305.18290); ipo: IPO (arXiv:2310.12036); simpo: "
                                       "reference-free SimPO (arXiv:2405.14734)", choices=PREFERENCE_LOSSES)
    beta: float = option(0.1, "DPO's KL strength (implicit reward = beta * log pi/pi_ref); IPO's tau; SimPO's "
                              "scale (about 2)", rule=POSITIVE)
    label_smoothing: float = option(0.0, "conservative DPO: the share of pairs assumed mislabelled",
                                    rule=HALF_OPEN_UNIT)
    simpo_gamma: float = option(1.0, "SimPO's target margin gamma (about beta / 2)", rule=NON_NEGATIVE)
    sft_coef: float = option(0.0, "add this times the chosen answers' token-mean NLL to the loss", rule=NON_NEGATIVE)
    reference: str = option("auto", "reference policy: adapters_off (LoRA only), precompute (log-probs of every "
                                    "pair once, before training), auto (adapters_off with LoRA, else precompute), "
                                    "none (SimPO)", choices=REFERENCES)

    def check(self) -> None:
        super().check()
        if self.reference == "adapters_off" and self.lora_rank == 0:
            raise UsageError("--reference adapters_off needs LoRA (--lora_rank > 0): without adapters the policy "
                             "is its own reference; use --reference precompute")
        if self.reference == "none" and self.loss_type != "simpo":
            raise UsageError(f"--reference none: --loss_type {self.loss_type} needs a reference; only simpo is "
                             "reference-free")


@dataclasses.dataclass
class GRPOConfig(RunConfig, RewardFunctionFields, ActorPlacement):
    """``minichatgpt grpo``: critic-free RL on prompts (GRPO, Dr. GRPO, RLOO, REINFORCE++), rewarded by
    reward functions (``--reward_fn``) and/or a reward model (``--rm_pretrain``)."""
    prompt_path: Optional[str] = option(None, "prompts (the PPO formats); other record fields reach reward "
                                              "functions as columns; default: built-in")
    rm_pretrain: Optional[str] = option(None, "reward model directory whose score is added to the reward functions'")
    algo: str = option("grpo", "advantage estimator", choices=ADVANTAGE_ESTIMATORS)
    num_samples_per_prompt: int = option(4, "responses sampled per prompt (G)", rule=POSITIVE_INT)
    num_episodes: int = option(1, "passes over the prompts", rule=POSITIVE_INT)
    experience_batch_size: int = option(8, "prompts per rollout batch (x G responses)", rule=POSITIVE_INT)
    train_batch_size: int = option(16, "responses per minibatch update", rule=POSITIVE_INT)
    max_epochs: int = option(1, "passes over each rollout batch", rule=POSITIVE_INT)
    clip_eps: float = option(0.2, "PPO ratio clip", aliases=("eps_clip",), rule=POSITIVE)
    kl_coef: float = option(0.04, "KL-to-reference coefficient beta (0: no reference model)", rule=NON_NEGATIVE)
    kl_mode: str = option("auto", "KL as a k3 loss term or a k1 reward penalty; auto: grpo/dr_grpo loss, "
                                  "rloo/reinforce_pp reward", choices=("auto", "loss", "reward"))
    loss_aggregation: str = option("auto", "token: mean over all tokens; sequence: per sequence then over "
                                           "sequences; constant: sum / (B x A); auto: grpo sequence, dr_grpo "
                                           "constant, others token", choices=("auto",) + AGGREGATIONS)
    actor_lr: float = option(1e-6, "policy learning rate (Adam)", rule=POSITIVE)
    max_grad_norm: float = option(1.0, "gradient clipping (0 disables)", rule=NON_NEGATIVE)
    max_input_len: int = option(96, "prompt tokens kept (left-truncated)", rule=LENGTH)
    max_new_tokens: int = option(64, "most tokens sampled per response", rule=POSITIVE_INT)
    temperature: float = option(1.0, "sampling temperature", rule=POSITIVE)
    top_k: int = option(0, "sample from the k most likely tokens (0: all)", rule=NON_NEGATIVE_INT)
    top_p: float = option(1.0, "nucleus sampling mass", rule=TOP_P)
    decode: str = option("auto", DECODE_HELP, choices=DECODE_MODES, rule=DECODE)

    def check(self) -> None:
        super().check()
        if not self.reward_fn and not self.rm_pretrain:
            raise UsageError("give --reward_fn (path/to/file.py:name or package.module:name), --rm_pretrain, or both")
        check_reward_functions(self)
        check_placement(self)
        if self.num_samples_per_prompt < 2 and self.algo != "reinforce_pp":
            raise UsageError(f"--algo {self.algo} compares the samples of a prompt: --num_samples_per_prompt must "
                             f"be >= 2, got {self.num_samples_per_prompt}")


RL_STAGES: Dict[str, type] = {"dpo": DPOConfig, "grpo": GRPOConfig}
DPO_DEMO: Dict[str, Any] = dict(batch_size=32, lr=1e-4, max_epochs=2, max_len=64, log_interval=20, eval_ratio=0.1)
GRPO_DEMO: Dict[str, Any] = dict(reward_fn=["minichatgpt.demo:hidden_rule_reward"], experience_batch_size=16,
                                 num_samples_per_prompt=4, train_batch_size=32, max_epochs=2, max_new_tokens=14,
                                 max_input_len=32, actor_lr=2e-5, kl_coef=0.02, log_interval=1)
RL_DEMO: Dict[str, Dict[str, Any]] = {"dpo": DPO_DEMO, "grpo": GRPO_DEMO}
RL_DATA_FIELD = {"dpo": "dataset", "grpo": "prompt_path"}
