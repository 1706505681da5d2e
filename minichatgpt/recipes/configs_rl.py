"""The configuration of the stages beyond PPO: ``minichatgpt dpo`` (``DPOConfig``) and ``minichatgpt grpo``
(``GRPOConfig``), declared like ``configs``'s, with the built-in task's sizes for each."""

import dataclasses
from typing import Any, Dict, Optional

from ..config import NON_NEGATIVE, POSITIVE, UsageError, option
from ..functional_rl import PREFERENCE_LOSSES
from ..trainer.dpo import REFERENCES
from .configs import SupervisedConfig

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


RL_STAGES: Dict[str, type] = {"dpo": DPOConfig}
DPO_DEMO: Dict[str, Any] = dict(batch_size=32, lr=1e-4, max_epochs=2, max_len=64, log_interval=20, eval_ratio=0.1)
RL_DEMO: Dict[str, Dict[str, Any]] = {"dpo": DPO_DEMO}
RL_DATA_FIELD = {"dpo": "dataset"}
