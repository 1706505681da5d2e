"""The original project's chain: ``train_reward_model.py --save_path rmstatic.pt`` writes the reward
model as a state dict file, and ``train_prompts.py --rm_path rmstatic.pt`` loads it into a reward model
(and critic) built from ``--rm_pretrain``/``--pretrain``. Built-in tiny model, reduced sizes."""

import torch

from minichatgpt.recipes import ppo, rm, sft
from minichatgpt.trainer.strategies import NaiveStrategy

SMALL = ["--max_datasets_size", "64", "--max_epochs", "1", "--batch_size", "16"]


def test_rm_state_dict_file_feeds_ppo_rm_path(tmp_path):
    sft.main(["--save_path", str(tmp_path / "sft")] + SMALL)
    rm_file = tmp_path / "rmstatic.pt"
    rm.main(["--save_path", str(rm_file)] + SMALL)
    assert rm_file.is_file()
    saved = torch.load(rm_file, map_location="cpu", weights_only=True)
    assert "value_head.weight" in saved

    ppo_flags = ["--pretrain", str(tmp_path / "sft"), "--rm_path", str(rm_file), "--num_episodes", "1",
                 "--max_timesteps", "1", "--update_timesteps", "1", "--experience_batch_size", "4",
                 "--train_batch_size", "4", "--max_epochs", "1", "--max_new_tokens", "4"]
    args = ppo.build_parser().parse_args(ppo_flags)
    actor, critic, reward_model, reference = ppo.build_models(args)
    ppo.load_rm_checkpoint(NaiveStrategy("cpu"), critic, reward_model, str(rm_file))
    for name, tensor in saved.items():
        assert torch.equal(reward_model.state_dict()[name], tensor), name
        assert torch.equal(critic.state_dict()[name], tensor), name
    result = ppo.main(ppo_flags + ["--save_path", str(tmp_path / "actor_checkpoint_prompts.pt")])
    assert "reward" in result["metrics"]
    actor_state = torch.load(tmp_path / "actor_checkpoint_prompts.pt", map_location="cpu", weights_only=True)
    assert actor_state.keys() == actor.state_dict().keys()
