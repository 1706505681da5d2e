"""DPO-family training on the built-in preference pairs with tiny models."""

import pytest
import torch
from torch.testing import assert_close

from conftest import tiny_config
from minichatgpt import demo
from minichatgpt.data import DPOCollator, PreferenceDataset
from minichatgpt.nn import Actor
from minichatgpt.trainer import DPOTrainer
from minichatgpt.trainer.dpo import pair_log_probs
from minichatgpt.trainer.strategies import NaiveStrategy


def dpo_setup(word_tokenizer, n=64, lr=2e-3, **model_kwargs):
    torch.manual_seed(0)
    model = Actor(config=tiny_config("gpt2", len(word_tokenizer)), **model_kwargs)
    dataset = PreferenceDataset(demo.preference_records(n, seed=1), word_tokenizer, max_len=64)
    strategy = NaiveStrategy("cpu")
    loader = strategy.setup_dataloader(dataset, 16, collate_fn=DPOCollator(word_tokenizer.pad_token_id))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model, optim = strategy.prepare((model, optim))
    return model, optim, strategy, loader


def test_collator_masks_response_tokens_only(word_tokenizer):
    records = demo.preference_records(4, seed=1)
    dataset = PreferenceDataset(records, word_tokenizer, max_len=64)
    batch = DPOCollator(word_tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    for i in range(4):
        for side in ("chosen", "rejected"):
            ids = batch[f"{side}_input_ids"][i][batch[f"{side}_response_mask"][i].bool()]
            assert word_tokenizer.decode(ids).replace(" <eos>", "").split() == \
                word_tokenizer.decode(word_tokenizer(records[i][side])["input_ids"]).split()


def test_pair_log_probs_equal_per_token_sum(word_tokenizer):
    model, _, _, loader = dpo_setup(word_tokenizer, n=8)
    model.eval()
    batch = next(iter(loader))
    out = pair_log_probs(model, batch)
    for i in range(2):  # a plain loop over one sequence's response tokens
        ids = batch["chosen_input_ids"][i:i + 1]
        logits = model(ids, batch["chosen_attention_mask"][i:i + 1])[0].log_softmax(-1)
        positions = batch["chosen_response_mask"][i].nonzero().flatten().tolist()
        assert_close(out.chosen[i], sum(logits[t - 1, ids[0, t]] for t in positions), rtol=1e-4, atol=1e-4)
        assert int(out.chosen_lengths[i]) == len(positions)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo"])
def test_loss_falls_and_margin_grows(word_tokenizer, loss_type):
    model, optim, strategy, loader = dpo_setup(word_tokenizer)
    beta = {"sigmoid": 0.5, "ipo": 0.5, "simpo": 2.0}[loss_type]
    trainer = DPOTrainer(model, strategy, optim, loss_type=loss_type, beta=beta, max_epochs=6, log_interval=1000)
    trainer.precompute_reference(loader) if loss_type != "simpo" else None
    before = trainer.evaluate(loader)
    after = trainer.fit(loader, loader)
    assert after["eval_loss"] < 0.8 * before["eval_loss"]
    assert after["eval_margin"] > before["eval_margin"] + 0.1
    assert after["eval_accuracy"] > 0.8


def test_precomputed_reference_equals_live_reference(word_tokenizer):
    """Precomputed before training (from the start weights) = the adapters-off model after training."""
    model, optim, strategy, loader = dpo_setup(word_tokenizer, n=32, lora_rank=4)
    trainer = DPOTrainer(model, strategy, optim, reference="precompute", max_epochs=2, log_interval=1000)
    trainer.fit(loader)
    live = DPOTrainer(model, strategy, optim, reference="adapters_off")
    assert any(float(p.detach().abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)  # trained
    for batch in loader:
        for a, b in zip(trainer.reference_log_probs(batch), live.reference_log_probs(batch)):
            assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_lora_reference_is_the_base_model(word_tokenizer):
    model, optim, strategy, loader = dpo_setup(word_tokenizer, n=16, lora_rank=4)
    DPOTrainer(model, strategy, optim, max_epochs=1, log_interval=1000).fit(loader)
    torch.manual_seed(0)
    base = Actor(config=tiny_config("gpt2", len(word_tokenizer))).eval()  # same seed: the weights before LoRA
    trainer = DPOTrainer(model, strategy, optim)
    assert trainer.reference == "adapters_off"
    batch = next(iter(loader))
    expected = pair_log_probs(base, batch)
    ref_chosen, ref_rejected = trainer.reference_log_probs(batch)
    assert_close(ref_chosen, expected.chosen, rtol=1e-5, atol=1e-4)
    assert_close(ref_rejected, expected.rejected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(pair_log_probs(model.eval(), batch).chosen, expected.chosen)  # adapters on differ


def test_sft_term_and_bad_arguments(word_tokenizer):
    model, optim, strategy, loader = dpo_setup(word_tokenizer, n=16)
    trainer = DPOTrainer(model, strategy, optim, sft_coef=0.5)
    trainer.precompute_reference(loader)
    model.eval()
    batch = next(iter(loader))
    loss, stats = trainer.loss(batch)
    plain = DPOTrainer(model, strategy, optim)
    plain.reference_table = trainer.reference_table
    policy = pair_log_probs(model, batch)
    nll = -policy.chosen.sum() / policy.chosen_lengths.sum()  # token mean over the chosen answers
    assert_close(stats["sft_loss"], nll)
    assert_close(loss, plain.loss(batch)[0] + 0.5 * nll)
    with pytest.raises(ValueError, match="LoRA"):
        DPOTrainer(model, strategy, optim, reference="adapters_off")
    with pytest.raises(ValueError, match="reference-free"):
        DPOTrainer(model, strategy, optim, reference="none")
    with pytest.raises(ValueError, match="loss_type"):
        DPOTrainer(model, strategy, optim, loss_type="hinge")
