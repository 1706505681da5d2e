"""Runs ``minichatgpt`` with a fault injected, for the resume tests.

``python resume_worker.py FAULT STEP COMMAND [FLAGS...]`` where FAULT is

- ``kill_after_save``: SIGKILL this process right after checkpoint STEP is complete;
- ``kill_mid_save``: SIGKILL it while checkpoint STEP is being written (files there, not yet sealed);
- ``sigterm``: send SIGTERM to itself during step STEP (optimizer step, or PPO timestep);
- ``sigterm_twice``: send SIGTERM twice during that step (exit at once, without a checkpoint).

Under torchrun only rank 0 injects the fault. With ``FAULT_STAGE`` set (``sft``, ``rm``, ``ppo``), only
that stage's checkpoints count (for the pipeline).
"""

import os
import signal
import sys

from minichatgpt.cli import main
from minichatgpt.trainer import checkpoint
from minichatgpt.trainer.ppo import PPOTrainer
from minichatgpt.trainer.supervised import SupervisedTrainer

FAULT, STEP = sys.argv[1], int(sys.argv[2])
RANK0 = int(os.environ.get("RANK", "0")) == 0


def kill(sig):
    if RANK0:
        os.kill(os.getpid(), sig)


if FAULT == "kill_after_save":
    save = checkpoint.CheckpointManager.save

    def save_then_kill(self, step, models, state):
        path = save(self, step, models, state)
        if step == STEP and self.config.get("stage") == os.environ.get("FAULT_STAGE", self.config.get("stage")):
            kill(signal.SIGKILL)
        return path

    checkpoint.CheckpointManager.save = save_then_kill
elif FAULT == "kill_mid_save":
    seal = checkpoint.CheckpointManager._seal

    def kill_before_seal(self, tmp, final, step):
        if step == STEP:
            kill(signal.SIGKILL)
        return seal(self, tmp, final, step)

    checkpoint.CheckpointManager._seal = kill_before_seal
elif FAULT in ("sigterm", "sigterm_twice"):
    times = 2 if FAULT == "sigterm_twice" else 1
    optimizer_step, make_experience = SupervisedTrainer._optimizer_step, PPOTrainer.make_experience

    def signalled_step(self, *args):
        if self.step + 1 == STEP:
            for _ in range(times):
                kill(signal.SIGTERM)
        return optimizer_step(self, *args)

    def signalled_rollout(self, *args):
        if self.timestep + 1 == STEP:
            for _ in range(times):
                kill(signal.SIGTERM)
        return make_experience(self, *args)

    SupervisedTrainer._optimizer_step = signalled_step
    PPOTrainer.make_experience = signalled_rollout
else:
    raise SystemExit(f"unknown fault {FAULT!r}")

sys.exit(main(sys.argv[3:]))
