"""Non-finite steps are skipped and counted, then stop the run; checkpoints never hold non-finite
weights; RNG, sampler and iterator state round-trip for exact resume."""

import os
import random
from copy import deepcopy

import numpy as np
import pytest
import torch

from conftest import tiny_config
from minichatgpt import demo
from minichatgpt.data import SFTCollator, SFTDataset
from minichatgpt.nn import GPTActor, GPTCritic, RewardModel
from minichatgpt.trainer import Callback, PPOTrainer, SFTTrainer
from minichatgpt.trainer.checkpoint import (CheckpointError, CheckpointManager, NonFiniteError, capture_rng_state,
                                            restore_rng_state, verify_checkpoint)
from minichatgpt.trainer.strategies import NaiveStrategy
from minichatgpt.trainer.utils import cycle, skip_batches


class Log(Callback):
    def __init__(self):
        self.rows = []

    def on_log(self, step, metrics):
        self.rows.append((step, metrics))


def sft_setup(word_tokenizer, max_nonfinite_steps=3, **kwargs):
    torch.manual_seed(0)
    strategy = NaiveStrategy("cpu")
    model = GPTActor(config=tiny_config("gpt2", len(word_tokenizer)))
    optim = torch.optim.AdamW(model.parameters(), 1e-3)
    data = SFTDataset(demo.sft_records(32), word_tokenizer, max_len=32)
    loader = strategy.setup_dataloader(data, 8, collate_fn=SFTCollator(word_tokenizer.pad_token_id))
    log = Log()
    trainer = SFTTrainer(model, strategy, optim, log_interval=1, max_nonfinite_steps=max_nonfinite_steps,
                         callbacks=[log], **kwargs)
    return trainer, loader, log


def test_a_non_finite_loss_skips_the_step_and_is_counted(word_tokenizer):
    trainer, loader, log = sft_setup(word_tokenizer)
    loss_fn, snapshots = trainer.loss, {}

    def loss(batch):
        snapshots[trainer.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        value, stats = loss_fn(batch)
        return (value * float("nan") if trainer.step == 1 else value), stats  # the second step's loss

    trainer.loss = loss
    trainer.fit(loader)
    assert trainer.step == 4  # every batch was consumed
    after_skip = snapshots[2]
    assert all(torch.equal(snapshots[1][k], after_skip[k]) for k in after_skip)  # step 2 changed nothing
    assert any(not torch.equal(snapshots[2][k], snapshots[3][k]) for k in after_skip)  # step 3 trained again
    assert [m["nonfinite_steps"] for _, m in log.rows] == [0, 1, 1, 1]
    assert trainer.nonfinite.consecutive == 0


def test_a_non_finite_gradient_norm_skips_the_step(word_tokenizer):
    trainer, loader, log = sft_setup(word_tokenizer)
    param = next(trainer.model.parameters())
    handle = param.register_hook(lambda g: g * float("inf") if trainer.step == 0 else g)
    before = deepcopy(trainer.model.state_dict())
    trainer.max_epochs = 1
    trainer.fit(loader)
    handle.remove()
    assert log.rows[0][1]["nonfinite_steps"] == 1 and not np.isfinite(log.rows[0][1]["grad_norm"])
    assert torch.isfinite(param).all()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_repeated_non_finite_steps_stop_the_run_with_a_message(word_tokenizer):
    trainer, loader, _ = sft_setup(word_tokenizer, max_nonfinite_steps=2)
    loss_fn = trainer.loss
    trainer.loss = lambda batch: (loss_fn(batch)[0] * float("nan"), {})
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row .*--max_nonfinite_steps"):
        trainer.fit(loader)


def test_ppo_skips_non_finite_updates_then_stops(word_tokenizer):
    torch.manual_seed(0)
    strategy = NaiveStrategy("cpu")
    cfg = tiny_config("gpt2", len(word_tokenizer))
    actor, critic, reward_model = GPTActor(config=cfg), GPTCritic(config=cfg), RewardModel(config=cfg)
    trainer = PPOTrainer(strategy, actor, critic, reward_model, deepcopy(actor), torch.optim.Adam(actor.parameters()),
                         torch.optim.Adam(critic.parameters()), train_batch_size=8, tokenizer=word_tokenizer,
                         max_new_tokens=4, max_nonfinite_steps=2)
    before = deepcopy(actor.state_dict())
    for p in critic.parameters():
        p.register_hook(lambda g: g * float("nan"))
    from minichatgpt.data import PromptCollator, PromptDataset

    prompts = PromptDataset(demo.prompt_records(16), word_tokenizer, max_len=16)
    loader = strategy.setup_dataloader(prompts, 8, collate_fn=PromptCollator(word_tokenizer.pad_token_id))
    with pytest.raises(NonFiniteError, match="actor or critic"):
        trainer.fit(loader, num_episodes=1, max_timesteps=4, update_timesteps=1)
    assert trainer.nonfinite.total == 2
    assert all(torch.isfinite(v).all() for v in critic.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in actor.state_dict().items())  # the actor still learned


def test_a_checkpoint_with_non_finite_weights_is_never_written(word_tokenizer, tmp_path):
    trainer, _, _ = sft_setup(word_tokenizer)
    manager = CheckpointManager(str(tmp_path), trainer.strategy)
    models = {"model": (trainer.model, trainer.optim)}
    manager.save(1, models, trainer.state_dict())
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteError, match="checkpoint 2: model has non-finite weights"):
        manager.save(2, models, trainer.state_dict())
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1"]
    assert manager.latest() == str(tmp_path / "checkpoint-1")


def test_checkpoint_round_trip_and_hash_check(word_tokenizer, tmp_path):
    trainer, loader, _ = sft_setup(word_tokenizer)
    trainer.fit(loader)
    manager = CheckpointManager(str(tmp_path), trainer.strategy)
    path = manager.save(trainer.step, {"model": (trainer.model, trainer.optim)}, trainer.state_dict())
    fresh, _, _ = sft_setup(word_tokenizer)
    state = manager.load(path, {"model": (fresh.model, fresh.optim)})
    fresh.load_state_dict(state)
    assert fresh.step == trainer.step and fresh._position == trainer._position
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, fresh.model.state_dict()[k]), k
    assert str(fresh.optim.state_dict()) == str(trainer.optim.state_dict())
    with open(os.path.join(path, "trainer_state.rank0.pt"), "ab") as f:
        f.write(b"junk")
    with pytest.raises(CheckpointError, match="trainer_state.rank0.pt fails its SHA-256 check"):
        verify_checkpoint(path)
    assert manager.latest() is None


def test_rng_state_round_trips():
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == first


def test_naive_sampler_order_depends_on_seed_and_epoch_only():
    strategy = NaiveStrategy("cpu")
    a = strategy.setup_dataloader(list(range(20)), 4, collate_fn=list, seed=3)
    b = strategy.setup_dataloader(list(range(20)), 4, collate_fn=list, seed=3)
    list(a)  # iterating one loader must not change the other's order
    a.sampler.set_epoch(1)
    b.sampler.set_epoch(1)
    assert list(a) == list(b)
    b.sampler.set_epoch(0)
    assert list(a) != list(b)


def test_skip_batches_and_cycle_resume_at_the_same_batch():
    strategy = NaiveStrategy("cpu")
    loader = strategy.setup_dataloader(list(range(10)), 3, collate_fn=list, seed=1)
    whole = list(loader)
    assert list(skip_batches(loader, 2)) == whole[2:]
    it = cycle(loader)
    drawn = [next(it) for _ in range(6)]  # four batches per epoch: crosses into the second epoch
    resumed = cycle(loader)
    resumed.load_state_dict(cycle(loader).state_dict() | {"epoch": 0, "position": 3})
    assert [next(resumed) for _ in range(3)] == drawn[3:6]
    assert it.state_dict() == {"epoch": 1, "position": 2}
