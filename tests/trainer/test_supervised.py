"""SFT and reward-model training on the built-in task with tiny models."""

import pytest
import torch

from conftest import tiny_config
from minichatgpt import demo
from minichatgpt.data import PreferenceCollator, PreferenceDataset, SFTCollator, SFTDataset
from minichatgpt.nn import LM, RewardModel
from minichatgpt.trainer import MetricsLogger, RewardModelTrainer, SFTTrainer
from minichatgpt.trainer.strategies import NaiveStrategy


def sft_setup(word_tokenizer, n=256, **model_kwargs):
    torch.manual_seed(0)
    model = LM(config=tiny_config("gpt2", len(word_tokenizer)), **model_kwargs)
    dataset = SFTDataset(demo.sft_records(n, seed=0), word_tokenizer, max_len=64)
    strategy = NaiveStrategy("cpu")
    loader = strategy.setup_dataloader(dataset, 16, collate_fn=SFTCollator(word_tokenizer.pad_token_id))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model, optim = strategy.prepare((model, optim))
    return model, optim, strategy, loader


def test_sft_loss_falls_and_is_logged(word_tokenizer, tmp_path):
    model, optim, strategy, loader = sft_setup(word_tokenizer)
    logger = MetricsLogger(str(tmp_path / "metrics.jsonl"), "sft")
    trainer = SFTTrainer(model, strategy, optim, max_epochs=3, log_interval=1, callbacks=[logger])
    before = trainer.evaluate(loader)["eval_loss"]
    metrics = trainer.fit(loader, loader)
    assert metrics["eval_loss"] < 0.6 * before
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 3 * len(loader) and '"stage": "sft"' in lines[0]


def test_gradient_accumulation_counts_optimizer_steps(word_tokenizer):
    model, optim, strategy, loader = sft_setup(word_tokenizer, n=96)  # 6 micro-batches
    trainer = SFTTrainer(model, strategy, optim, max_epochs=1, accumulation_steps=4)
    trainer.fit(loader)
    assert trainer.step == 2  # 4 + the remaining 2 micro-batches
    with pytest.raises(ValueError, match="accumulation_steps"):
        SFTTrainer(model, strategy, optim, accumulation_steps=0)


def test_lora_sft_changes_only_adapters(word_tokenizer):
    model, optim, strategy, loader = sft_setup(word_tokenizer, n=64, lora_rank=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    SFTTrainer(model, strategy, optim, max_epochs=1).fit(loader)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


@pytest.mark.parametrize("loss_fn", ["log_sig", "log_exp"])
def test_reward_model_fits_the_embedded_pairs(word_tokenizer, loss_fn):
    torch.manual_seed(0)
    model = RewardModel(config=tiny_config("gpt2", len(word_tokenizer)))
    dataset = PreferenceDataset(demo.preference_records(192, seed=1), word_tokenizer, max_len=64)
    strategy = NaiveStrategy("cpu")
    loader = strategy.setup_dataloader(dataset, 32, collate_fn=PreferenceCollator(word_tokenizer.pad_token_id))
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model, optim = strategy.prepare((model, optim))
    trainer = RewardModelTrainer(model, strategy, optim, loss_fn=loss_fn, max_epochs=25, log_interval=1000)
    before = trainer.evaluate(loader)["eval_accuracy"]
    after = trainer.fit(loader, loader)["eval_accuracy"]
    assert before < 0.75 and after > 0.9
    with pytest.raises(ValueError, match="hinge"):
        RewardModelTrainer(model, strategy, optim, loss_fn="hinge")
