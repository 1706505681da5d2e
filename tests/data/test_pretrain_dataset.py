"""PretrainDataset: documents + EOS split into consecutive chunks with labels equal to the inputs."""

import pytest
import torch

from minichatgpt.data import DataError, PretrainDataset


def test_long_text_is_split_into_consecutive_chunks(word_tokenizer):
    text = "the cat is gentle and the dog is lovely and the soup is sweet ."  # 15 words
    dataset = PretrainDataset([{"text": text}], word_tokenizer, max_len=4)
    document = word_tokenizer(text)["input_ids"] + [word_tokenizer.eos_token_id]  # 16 ids
    assert [len(item["input_ids"]) for item in dataset] == [4, 4, 4, 4]
    assert torch.cat([item["input_ids"] for item in dataset]).tolist() == document
    assert all(torch.equal(item["labels"], item["input_ids"]) for item in dataset)


def test_short_texts_are_one_chunk_each_and_single_token_tails_are_left_out(word_tokenizer):
    dataset = PretrainDataset([{"text": "the cat"}, {"text": "the cat is"}], word_tokenizer, max_len=3)
    # "the cat <eos>" fits; "the cat is <eos>" leaves a lone "<eos>" that would predict nothing.
    assert [item["input_ids"].tolist() for item in dataset] == [
        word_tokenizer("the cat <eos>")["input_ids"], word_tokenizer("the cat is")["input_ids"]]


def test_gpt2_chunks_decode_back_to_the_text(gpt2_tokenizer):
    text = "Web text, as in C4: several sentences. " * 20
    dataset = PretrainDataset([{"text": text}], gpt2_tokenizer, max_len=32)
    assert all(len(item["input_ids"]) <= 32 for item in dataset)
    assert gpt2_tokenizer.decode(torch.cat([item["input_ids"] for item in dataset])) == text + gpt2_tokenizer.eos_token


@pytest.mark.parametrize("name", ["c4.jsonl", "c4.parquet", "c4.jsonl.gz", "c4.csv"])
def test_files(word_tokenizer, write, name):
    records = [{"text": "the cat is gentle ."}, {"text": "the soup is sweet ."}, {"text": "the rope ."}]
    dataset = PretrainDataset(write(name, records), word_tokenizer, max_len=64, max_datasets_size=2)
    assert len(dataset) == 2


@pytest.mark.parametrize("record,message", [
    ({"content": "x"}, "unknown record format (fields: 'content'); accepted field sets: {text}"),
    ({"text": 5}, "field 'text' must be a string, got int"),
])
def test_bad_record(word_tokenizer, write, record, message):
    path = write("c4.jsonl", [{"text": "the cat"}, record])
    with pytest.raises(DataError) as info:
        PretrainDataset(path, word_tokenizer)
    assert str(info.value) == f"{path}:2: {message}"


def test_only_empty_documents_is_an_error(word_tokenizer):
    with pytest.raises(DataError, match=r"^<list>: no text to train on"):
        PretrainDataset([{"text": ""}], word_tokenizer)
