"""PPO trainer: the seed usage verbatim, ptx data flow, and a short run that raises the reward."""

from copy import deepcopy

import torch

from conftest import tiny_config
from minichatgpt import demo
from minichatgpt.data import PromptCollator, PromptDataset, SFTCollator, SFTDataset
from minichatgpt.nn import GPTActor, GPTCritic, RewardModel
from minichatgpt.trainer import PPOTrainer
from minichatgpt.trainer.strategies import NaiveStrategy


def prompt_loader(strategy, tokenizer, n=32, batch_size=8):
    dataset = PromptDataset(demo.prompt_records(n), tokenizer, max_len=32)
    return strategy.setup_dataloader(dataset, batch_size, collate_fn=PromptCollator(tokenizer.pad_token_id))


def test_seed_usage_runs_verbatim(tiny_model_dirs, word_tokenizer, tmp_path):
    """DESIGN section 1, nearly word for word, on tiny local GPT-2 models."""
    path_or_name = tiny_model_dirs["gpt2"]
    strategy = NaiveStrategy()
    with strategy.model_init_context():
        actor = GPTActor(pretrained=path_or_name, lora_rank=0)
        critic = GPTCritic(pretrained=path_or_name)
        initial_model = deepcopy(actor)
        reward_model = RewardModel(deepcopy(critic.model), deepcopy(critic.value_head))
    actor_optim, critic_optim = torch.optim.Adam(actor.parameters(), 1e-4), torch.optim.Adam(critic.parameters(), 1e-4)
    (actor, actor_optim), (critic, critic_optim), reward_model, initial_model = strategy.prepare(
        (actor, actor_optim), (critic, critic_optim), reward_model, initial_model)
    pretrain = SFTDataset(demo.sft_records(16), word_tokenizer, max_len=32)
    pretrain_dataloader = strategy.setup_dataloader(pretrain, 4, collate_fn=SFTCollator(word_tokenizer.pad_token_id))
    trainer = PPOTrainer(strategy, actor, critic, reward_model, initial_model, actor_optim, critic_optim,
                         kl_coef=0.1, ptx_coef=0.9, train_batch_size=4, experience_batch_size=8, max_epochs=1,
                         tokenizer=word_tokenizer, callbacks=[], max_new_tokens=6, do_sample=True, top_k=20)
    before = {k: v.clone() for k, v in strategy.unwrap_model(actor).state_dict().items()}
    trainer.fit(prompt_loader(strategy, word_tokenizer), pretrain_dataloader, num_episodes=1, max_timesteps=2,
                update_timesteps=2)
    after = strategy.unwrap_model(actor).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    strategy.save_model(actor, str(tmp_path / "actor_checkpoint.pt"), only_rank0=True)
    strategy.save_optimizer(actor_optim, str(tmp_path / "actor_optim_checkpoint.pt"), only_rank0=False)
    fresh = GPTActor(pretrained=path_or_name)
    fresh_optim = torch.optim.Adam(fresh.parameters(), 1e-4)
    fresh, fresh_optim = strategy.prepare((fresh, fresh_optim))
    strategy.load_model(fresh, str(tmp_path / "actor_checkpoint.pt"), strict=False)
    strategy.load_optimizer(fresh_optim, str(tmp_path / "actor_optim_checkpoint.pt"))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, after[k]), k  # bit-exact round trip
    saved, loaded = actor_optim.state_dict()["state"], fresh_optim.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for i in saved:
        assert torch.equal(saved[i]["exp_avg"], loaded[i]["exp_avg"])


class CountingLoader:
    """An iterable that counts how many iterators were created and remembers what it yielded."""

    def __init__(self, batches):
        self.batches, self.iterators, self.yielded = batches, 0, []

    def __iter__(self):
        self.iterators += 1
        for batch in self.batches:
            self.yielded.append(batch)
            yield batch

    def __len__(self):
        return len(self.batches)


def test_ptx_batches_come_from_one_persistent_iterator(word_tokenizer):
    torch.manual_seed(0)
    strategy = NaiveStrategy("cpu")
    cfg = tiny_config("gpt2", len(word_tokenizer))
    actor, critic = GPTActor(config=cfg), GPTCritic(config=cfg)
    reward_model, initial = RewardModel(config=cfg), deepcopy(actor)
    ptx = SFTDataset(demo.sft_records(6), word_tokenizer, max_len=32)
    collate = SFTCollator(word_tokenizer.pad_token_id)
    ptx_loader = CountingLoader([collate([ptx[i], ptx[i + 1]]) for i in (0, 2, 4)])
    seen = []

    class Spy(torch.nn.Module):
        """Records the (ids, mask) of every full-sequence (ptx) forward call of the actor."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, sequences, attention_mask, num_actions=None):
            if num_actions is None:
                seen.append((sequences.clone(), attention_mask.clone()))
            return self.inner(sequences, attention_mask, num_actions)

        def generate(self, *args, **kwargs):
            return self.inner.generate(*args, **kwargs)

    spy = Spy(actor)
    trainer = PPOTrainer(strategy, spy, critic, reward_model, initial, torch.optim.Adam(actor.parameters()),
                         torch.optim.Adam(critic.parameters()), train_batch_size=8, tokenizer=word_tokenizer,
                         max_new_tokens=4)
    # 4 updates of one minibatch each -> 4 ptx batches: the 3 batches in order, then the first again.
    trainer.fit(prompt_loader(strategy, word_tokenizer, n=32), ptx_loader, num_episodes=1, max_timesteps=4,
                update_timesteps=1)
    assert len(seen) == 4 and ptx_loader.iterators == 2
    for (ids, mask), batch in zip(seen, ptx_loader.yielded):
        assert torch.equal(ids, batch["input_ids"]) and torch.equal(mask, batch["attention_mask"])


def mean_score(actor, reward_model, loader, tokenizer) -> float:
    """Mean RM score of sampled responses to every prompt of ``loader`` (seeded, so comparable)."""
    torch.manual_seed(123)
    scores = []
    for batch in loader:
        rollout = actor.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            scores.append(reward_model(rollout.sequences, rollout.attention_mask))
    return float(torch.cat(scores).mean())


def test_short_ppo_run_raises_reward_model_score(word_tokenizer):
    torch.manual_seed(0)
    strategy = NaiveStrategy("cpu")
    cfg = tiny_config("gpt2", len(word_tokenizer))
    actor, critic, reward_model = GPTActor(config=cfg), GPTCritic(config=cfg), RewardModel(config=cfg)
    with torch.no_grad():
        reward_model.value_head.weight.mul_(10.0)  # a random but decisive preference over responses
    initial = deepcopy(actor)
    trainer = PPOTrainer(strategy, actor, critic, reward_model, initial, torch.optim.Adam(actor.parameters(), 3e-3),
                         torch.optim.Adam(critic.parameters(), 3e-3), kl_coef=0.01, train_batch_size=16,
                         max_epochs=2, tokenizer=word_tokenizer, max_new_tokens=6)
    loader = prompt_loader(strategy, word_tokenizer, n=64, batch_size=16)
    before = mean_score(actor, reward_model, loader, word_tokenizer)
    trainer.fit(loader, num_episodes=32, max_timesteps=1, update_timesteps=1)
    after = mean_score(actor, reward_model, loader, word_tokenizer)
    assert after > before + 1.0, (before, after)  # the RM head is scaled so scores span about +-8
