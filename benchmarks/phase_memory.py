"""Peak RSS of each phase of a `minichatgpt ppo` run (load, generate, experience, train, save).

    python benchmarks/phase_memory.py ppo --config examples/configs/ppo_smollm2.yaml --precision bf16 ...

Runs the command in this process. At each phase boundary the kernel's high-water mark (VmHWM) is read and
reset through ``/proc/self/clear_refs`` (Linux), so each phase's peak is exact rather than sampled; a
nested phase counts towards its outer one too. Prints one ``PEAKS {json}`` line in GB (``whole``: the run).
"""

import functools
import json
import sys
import time
from typing import Dict, List


def high_water_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1e6


def reset_high_water() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


PEAKS: Dict[str, float] = {}
STACK: List[list] = [["other", 0.0]]


def phase(name: str, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        STACK[-1][1] = max(STACK[-1][1], high_water_gb())
        reset_high_water()
        STACK.append([name, 0.0])
        try:
            return fn(*args, **kwargs)
        finally:
            _, peak = STACK.pop()
            peak = max(peak, high_water_gb())
            PEAKS[name] = max(PEAKS.get(name, 0.0), peak)
            STACK[-1][1] = max(STACK[-1][1], peak)
            reset_high_water()
    return wrapped


def main(argv: List[str]) -> dict:
    import minichatgpt.recipes.ppo as recipe
    from minichatgpt import cli
    from minichatgpt.experience import maker
    from minichatgpt.nn import models
    from minichatgpt.trainer import ppo as trainer

    recipe.build_models = phase("load", recipe.build_models)
    recipe.save_pretrained = phase("save", recipe.save_pretrained)
    models.Actor.generate = phase("generate", models.Actor.generate)
    maker.ExperienceMaker.make_experience = phase("experience", maker.ExperienceMaker.make_experience)
    trainer.PPOTrainer.training_step = phase("train", trainer.PPOTrainer.training_step)
    start = time.time()
    cli.main(argv)
    PEAKS["other"] = max(STACK[0][1], high_water_gb())
    PEAKS["whole"] = max(PEAKS.values())
    result = {k: round(v, 3) for k, v in PEAKS.items()}
    result["wall_s"] = round(time.time() - start, 1)
    print("PEAKS", json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
