"""Collators: right padding for training batches, left padding for prompts, picklable."""

import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from minichatgpt.data import (PreferenceCollator, PretrainDataset, PromptCollator, PromptDataset, SFTCollator,
                              SFTDataset, pad_sequences)
from minichatgpt.demo import prompt_records, sft_records
from minichatgpt.functional import IGNORE_INDEX

PAD = 0


def t(*values):
    return torch.tensor(values, dtype=torch.long)


def test_sft_collator_right_pads_and_ignores_padding_in_labels():
    items = [{"input_ids": t(5, 6, 7), "labels": t(IGNORE_INDEX, 6, 7)}, {"input_ids": t(8), "labels": t(8)}]
    batch = SFTCollator(PAD)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_preference_collator_pads_both_sides_to_one_length():
    items = [{"chosen_input_ids": t(1, 2), "rejected_input_ids": t(3, 4, 5, 6)},
             {"chosen_input_ids": t(7, 8, 9), "rejected_input_ids": t(1)}]
    batch = PreferenceCollator(PAD)(items)
    assert batch["chosen_input_ids"].tolist() == [[1, 2, PAD, PAD], [7, 8, 9, PAD]]
    assert batch["chosen_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert batch["rejected_input_ids"].tolist() == [[3, 4, 5, 6], [1, PAD, PAD, PAD]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]


def test_prompt_collator_left_pads():
    batch = PromptCollator(PAD)([{"input_ids": t(5, 6, 7)}, {"input_ids": t(8)}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_padding_side_does_not_come_from_the_tokenizer(word_tokenizer):
    """Whatever the tokenizer's padding_side, prompts end at the last column and SFT rows start at 0."""
    prompts = PromptDataset(prompt_records(4), word_tokenizer)
    sft = SFTDataset(sft_records(4), word_tokenizer)
    original = word_tokenizer.padding_side
    try:
        for side in ("left", "right"):
            word_tokenizer.padding_side = side
            prompt_batch = PromptCollator(word_tokenizer.pad_token_id)(list(prompts))
            assert prompt_batch["attention_mask"][:, -1].all()
            sft_batch = SFTCollator(word_tokenizer.pad_token_id)(list(sft))
            assert sft_batch["attention_mask"][:, 0].all()
    finally:
        word_tokenizer.padding_side = original


@pytest.mark.parametrize("collator", [SFTCollator(3), PreferenceCollator(3), PromptCollator(3)])
def test_collators_pickle(collator):
    clone = pickle.loads(pickle.dumps(collator))
    assert type(clone) is type(collator) and clone.pad_token_id == 3


def test_dataloader_over_pretrain_data(word_tokenizer):
    dataset = PretrainDataset([{"text": "the cat is gentle ."}, {"text": "the soup ."}], word_tokenizer)
    (batch,) = DataLoader(dataset, batch_size=2, collate_fn=SFTCollator(word_tokenizer.pad_token_id))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 6)
    assert batch["labels"][1, -1].item() == IGNORE_INDEX


def test_pad_sequences_length_and_errors():
    padded, mask = pad_sequences([t(1, 2)], value=9, side="left", length=4)
    assert padded.tolist() == [[9, 9, 1, 2]] and mask.tolist() == [[0, 0, 1, 1]]
    with pytest.raises(ValueError, match="side"):
        pad_sequences([t(1)], value=0, side="middle")
    with pytest.raises(ValueError, match="pad_token_id"):
        SFTCollator(None)
