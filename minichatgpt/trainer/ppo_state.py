"""What a PPO checkpoint holds besides weights and optimizers: counters, the KL controller, the
reward-score statistics, the prompt and ptx iterator positions, the rollout statistics of the current
update and a non-empty replay buffer, so a resumed run continues bit for bit."""

from collections import defaultdict
from typing import Dict

import torch

from ..experience import Experience


def ppo_state_dict(trainer) -> Dict:
    """Counters, KL controller, score statistics, data positions, rollout statistics and buffer."""
    moments = trainer.maker.score_moments
    return {"step": trainer.step, "timestep": trainer.timestep, "kl_coef": trainer.kl_ctl.value,
            "score_moments": None if moments is None else
            {"mean": moments.mean, "var": moments.var, "count": moments.count},
            "prompts": trainer._prompt_iter.state_dict() if trainer._prompt_iter is not None else None,
            "ptx": trainer._ptx_iter.state_dict() if trainer._ptx_iter is not None else None,
            "rollout_stats": {n: [float(v) for v in vs] for n, vs in trainer._rollout_stats.items()},
            "buffer": [vars(item.to("cpu")) for item in trainer.buffer.items],
            "nonfinite": trainer.nonfinite.state_dict()}


def load_ppo_state(trainer, state: Dict) -> None:
    """Put back what ``ppo_state_dict`` took (the iterators must exist: ``fit`` creates them first)."""
    trainer.step, trainer.timestep, trainer.kl_ctl.value = state["step"], state["timestep"], state["kl_coef"]
    if state["score_moments"] is not None and trainer.maker.score_moments is not None:
        m = trainer.maker.score_moments
        m.mean, m.var, m.count = state["score_moments"]["mean"], state["score_moments"]["var"], \
            state["score_moments"]["count"]
    if state["prompts"] is not None:
        trainer._prompt_iter.load_state_dict(state["prompts"])
    if state["ptx"] is not None and trainer._ptx_iter is not None:
        trainer._ptx_iter.load_state_dict(state["ptx"])
    trainer._rollout_stats = defaultdict(list, {n: [torch.tensor(v) for v in vs]
                                                for n, vs in state["rollout_stats"].items()})
    device = None if trainer.buffer.cpu_offload else trainer.strategy.device
    trainer.buffer.items = [Experience(**item).to(device) if device else Experience(**item)
                            for item in state["buffer"]]
    trainer.nonfinite.load_state_dict(state["nonfinite"])
