"""The real sample files of ../shared/data load through the matching dataset with the GPT-2 tokenizer.

Row counts come from ../shared/data/README.md. Tokenization is limited to the first records
(``max_datasets_size``) to stay fast; reading every row checks the count.
"""

import os

import pytest

from conftest import SHARED_DATA, requires_shared
from minichatgpt.data import PreferenceDataset, PretrainDataset, PromptDataset, SFTDataset, read_records

LIMIT = 40

CASES = [
    ("alpaca_en_demo.json", 999, SFTDataset),
    ("alpaca_zh_demo.json", 1000, SFTDataset),
    ("instruction_data_with_preference.json", 1100, SFTDataset),
    ("self_instruct_seed_tasks.jsonl", 175, SFTDataset),
    ("hh_rlhf_harmless_base_test.jsonl.gz", 2312, PreferenceDataset),
    ("dpo_en_demo.json", 300, PreferenceDataset),
    ("instruction_data_with_preference.json", 1100, PreferenceDataset),
    ("hh_rlhf_harmless_base_test.jsonl.gz", 2312, PromptDataset),
    ("instinwild_seed_prompts_en.jsonl", 429, PromptDataset),
    ("instinwild_seed_prompts_ch.jsonl", 429, PromptDataset),
    ("self_instruct_seed_tasks.jsonl", 175, PromptDataset),
    ("c4_demo.jsonl", 300, PretrainDataset),
]


@pytest.mark.parametrize("name,rows,dataset_class", [
    pytest.param(*case, marks=requires_shared(os.path.join(SHARED_DATA, case[0])), id=f"{case[2].__name__}-{case[0]}")
    for case in CASES])
def test_shared_file_loads(gpt2_tokenizer, name, rows, dataset_class):
    path = os.path.join(SHARED_DATA, name)
    assert len(read_records(path)) == rows
    dataset = dataset_class(path, gpt2_tokenizer, max_len=512, max_datasets_size=LIMIT)
    if dataset_class is PretrainDataset:
        assert len(dataset) >= LIMIT  # long documents give several chunks
    else:
        # Every self-instruct seed task has one instance, so one record is one example everywhere.
        assert len(dataset) + getattr(dataset, "num_truncated_away", 0) == LIMIT
        assert len(dataset) > LIMIT // 2


@requires_shared(os.path.join(SHARED_DATA, "hh_rlhf_harmless_base_test.jsonl.gz"))
def test_hh_rlhf_prompts_match_the_chosen_dialogues(gpt2_tokenizer):
    path = os.path.join(SHARED_DATA, "hh_rlhf_harmless_base_test.jsonl.gz")
    records = read_records(path, max_records=20)
    dataset = PromptDataset(path, gpt2_tokenizer, max_len=4096, max_datasets_size=20)
    for record, item in zip(records, dataset):
        # The plain format is hh-rlhf's own (without the leading blank line).
        cut = record["chosen"].rfind("\n\nAssistant:")
        prompt = gpt2_tokenizer.decode(item["input_ids"])
        assert " ".join(prompt.split()) == " ".join((record["chosen"][:cut] + "\n\nAssistant:").split())


@requires_shared(os.path.join(SHARED_DATA, "dpo_en_demo.json"))
def test_dpo_demo_multi_turn_prompts(gpt2_tokenizer):
    path = os.path.join(SHARED_DATA, "dpo_en_demo.json")
    records = read_records(path, max_records=60)
    dataset = PreferenceDataset(records, gpt2_tokenizer, max_len=4096)
    assert len(dataset) + dataset.num_truncated_away == 60 and len(dataset) >= 55
    # A record with k human turns renders k "Human:" headers and k "Assistant:" headers.
    turns = [sum(t["from"] == "human" for t in r["conversations"]) for r in records]
    multi = next(i for i, k in enumerate(turns) if k > 1)
    text = gpt2_tokenizer.decode(dataset[multi]["chosen_input_ids"])
    assert text.count("Human: ") == turns[multi] and text.count("Assistant:") == turns[multi]
