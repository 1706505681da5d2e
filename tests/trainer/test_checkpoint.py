"""CheckpointManager and resolve_resume on tiny in-process models: bit-exact round trips, hash checks that
fall back to the previous checkpoint, pruning, leftover ``.tmp`` directories and non-finite weights.

The end-to-end kill/resume runs live in tests/recipes/test_resume.py; these call the manager directly.
"""

import hashlib
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_config
from minichatgpt.nn import load_model
from minichatgpt.trainer.checkpoint import (MANIFEST, CheckpointError, CheckpointManager, NonFiniteError,
                                            resolve_resume, verify_checkpoint)
from minichatgpt.trainer.strategies import NaiveStrategy

IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def tiny(seed: int = 0, lr: float = 1e-2):
    """A 2-layer GPT-2 and an AdamW that has taken ``seed + 1`` steps (so its state is not empty)."""
    torch.manual_seed(seed)
    model = load_model(config=tiny_config("gpt2"))
    optim = torch.optim.AdamW(model.parameters(), lr)
    for _ in range(seed + 1):
        train_step(model, optim)
    return model, optim


def train_step(model, optim):
    optim.zero_grad()
    model(input_ids=IDS, labels=IDS).loss.backward()
    optim.step()


def manager_at(root, **kwargs):
    return CheckpointManager(str(root), NaiveStrategy("cpu"), **kwargs)


def names(root):
    return sorted(os.listdir(root))


def damage(path):
    """Flip one byte in the middle of ``path``: same size, different content."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_round_trip_is_bit_exact_for_weights_optimizer_and_trainer_state(tmp_path):
    model, optim = tiny(seed=2)
    state = {"step": 3, "position": [1, 4], "losses": torch.tensor([0.5, float("inf")]), "name": "sft"}
    path = manager_at(tmp_path).save(3, {"model": (model, optim)}, state)
    fresh, fresh_optim = tiny(seed=7)  # other weights and other optimizer moments
    loaded = manager_at(tmp_path).load(path, {"model": (fresh, fresh_optim)})

    assert loaded.keys() == state.keys() and loaded["position"] == [1, 4] and loaded["name"] == "sft"
    assert torch.equal(loaded["losses"], state["losses"])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    saved, restored = optim.state_dict(), fresh_optim.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    for index, moments in saved["state"].items():
        for key, value in moments.items():
            assert torch.equal(restored["state"][index][key], value), (index, key)
    # Both continue identically (same dropout masks): nothing the next step depends on was lost.
    for m, o in ((model, optim), (fresh, fresh_optim)):
        torch.manual_seed(3)
        train_step(m, o)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_manifest_records_step_config_and_the_sha256_of_every_file(tmp_path):
    model, optim = tiny()
    path = manager_at(tmp_path, config={"lr": 0.01}).save(5, {"actor": (model, optim)}, {"step": 5})
    manifest = json.loads(open(os.path.join(path, MANIFEST)).read())
    assert manifest["step"] == 5 and manifest["config"] == {"lr": 0.01} and manifest["world_size"] == 1
    files = sorted(n for n in os.listdir(path) if n != MANIFEST)
    assert files == ["actor.safetensors", "actor_optim.pt", "trainer_state.rank0.pt"]
    assert manifest["files"] == {n: hashlib.sha256(open(os.path.join(path, n), "rb").read()).hexdigest()
                                 for n in files}
    assert verify_checkpoint(path) == manifest


def test_only_trainable_weights_are_saved_and_a_different_trainable_set_is_refused(tmp_path):
    model, optim = tiny()
    model.transformer.wte.weight.requires_grad_(False)  # a frozen base part (tied with lm_head)
    path = manager_at(tmp_path).save(1, {"model": (model, None)}, {})
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {n for n, p in model.named_parameters() if p.requires_grad}
    other, _ = tiny()  # everything trainable: the embedding is expected but absent
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*does not match.*missing \['transformer\.wte"):
        manager_at(tmp_path).load(path, {"model": (other, None)})


@pytest.mark.parametrize("victim", ["model.safetensors", "model_optim.pt", "trainer_state.rank0.pt"])
def test_a_file_changed_after_saving_fails_its_hash_and_resume_falls_back(victim, tmp_path):
    model, optim = tiny()
    manager = manager_at(tmp_path)
    first = manager.save(1, {"model": (model, optim)}, {"step": 1})
    second = manager.save(2, {"model": (model, optim)}, {"step": 2})
    damage(os.path.join(second, victim))
    with pytest.raises(CheckpointError, match=f"{victim} fails its SHA-256 check"):
        manager.load(second, {"model": (model, optim)})
    assert manager.latest() == first
    assert resolve_resume("auto", str(tmp_path), manager) == first
    assert resolve_resume(str(tmp_path), None, manager) == first  # a directory of checkpoints
    with pytest.raises(CheckpointError, match=victim):  # naming the damaged checkpoint itself is refused
        resolve_resume(second, None, manager)
    assert manager.load(first, {"model": (model, optim)}) == {"step": 1}


def test_a_missing_file_or_manifest_is_an_incomplete_checkpoint(tmp_path):
    model, optim = tiny()
    path = manager_at(tmp_path).save(1, {"model": (model, optim)}, {})
    os.remove(os.path.join(path, "model_optim.pt"))
    with pytest.raises(CheckpointError, match="is missing model_optim.pt"):
        verify_checkpoint(path)
    os.remove(os.path.join(path, MANIFEST))
    with pytest.raises(CheckpointError, match=f"has no {MANIFEST}"):
        verify_checkpoint(path)
    assert manager_at(tmp_path).latest() is None


def test_save_total_limit_prunes_the_oldest_by_step_number(tmp_path):
    model, optim = tiny()
    manager = manager_at(tmp_path, save_total_limit=2)
    for step in (2, 9, 10, 11):  # 10 and 11 sort before 9 as text
        manager.save(step, {"model": (model, optim)}, {"step": step})
    assert names(tmp_path) == ["checkpoint-10", "checkpoint-11"]
    assert manager.checkpoints() == [str(tmp_path / "checkpoint-11"), str(tmp_path / "checkpoint-10")]
    assert manager.latest() == str(tmp_path / "checkpoint-11")
    with pytest.raises(ValueError, match="save_total_limit must be >= 1"):
        manager_at(tmp_path, save_total_limit=0)


def test_saving_a_step_again_replaces_it(tmp_path):
    model, optim = tiny()
    manager = manager_at(tmp_path)
    manager.save(1, {"model": (model, optim)}, {"run": "first"})
    path = manager.save(1, {"model": (model, optim)}, {"run": "second"})
    assert names(tmp_path) == ["checkpoint-1"] and manager.load(path, {"model": (model, optim)}) == {"run": "second"}


def test_a_leftover_tmp_directory_is_never_taken_and_is_removed_by_the_next_save(tmp_path):
    model, optim = tiny()
    manager = manager_at(tmp_path)
    first = manager.save(1, {"model": (model, optim)}, {"step": 1})
    # A save killed just before its rename: complete and valid contents, but still under the .tmp name.
    shutil.copytree(first, tmp_path / "checkpoint-9.tmp")
    assert manager.checkpoints() == [first] and manager.latest() == first
    assert resolve_resume("auto", str(tmp_path), manager) == first
    with pytest.raises(CheckpointError, match="holds no valid checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-9.tmp"), None, manager)
    manager.save(2, {"model": (model, optim)}, {"step": 2})
    assert names(tmp_path) == ["checkpoint-1", "checkpoint-2"]


def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path):
    actor, actor_optim = tiny()
    critic, critic_optim = tiny(seed=1)
    with torch.no_grad():
        critic.transformer.h[1].mlp.c_fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="checkpoint 4: critic has non-finite weights"):
        manager_at(tmp_path).save(4, {"actor": (actor, actor_optim), "critic": (critic, critic_optim)}, {})
    assert not os.path.exists(tmp_path) or names(tmp_path) == []


def test_load_restores_the_rng_states_of_the_moment_of_saving(tmp_path):
    model, optim = tiny()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = manager_at(tmp_path).save(1, {"model": (model, optim)}, {})

    def draw():
        return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randint(0, 9, (4,)).tolist()

    after_save = draw()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    assert draw() != after_save
    manager_at(tmp_path).load(path, {"model": (model, optim)})
    assert draw() == after_save


def test_a_checkpoint_of_another_world_size_is_refused(tmp_path):
    model, optim = tiny()
    path = manager_at(tmp_path).save(1, {"model": (model, optim)}, {})
    manifest_path = os.path.join(path, MANIFEST)
    manifest = json.loads(open(manifest_path).read())
    manifest["world_size"] = 2
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(CheckpointError, match="written by 2 processes.*same number \\(now 1\\)"):
        manager_at(tmp_path).load(path, {"model": (model, optim)})


def test_resolve_resume_arguments(tmp_path):
    manager = manager_at(tmp_path / "checkpoints")
    assert resolve_resume(None, None, manager) is None and resolve_resume("", None, manager) is None
    assert resolve_resume("auto", str(tmp_path / "checkpoints"), manager) is None  # nothing yet: start afresh
    with pytest.raises(ValueError, match="--resume auto needs --save_path"):
        resolve_resume("auto", None, manager)
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_resume(missing, None, manager)
    model, optim = tiny()
    path = manager.save(3, {"model": (model, optim)}, {})
    assert resolve_resume(path, None, manager) == path
    with pytest.raises(CheckpointError, match="holds no valid checkpoint"):
        resolve_resume(str(tmp_path), None, manager)  # checkpoints are one level down, not searched recursively
