"""Fixtures of the data-layer tests: tokenizers with distinct conventions and a record-file writer."""

import csv
import gzip
import io
import json
import os

import pytest
from tokenizers import processors

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared")
from minichatgpt.demo import build_word_tokenizer, vocabulary
from minichatgpt.tokenizer import prepare_tokenizer

GPT2_DIR = os.path.join(SHARED, "tokenizers", "gpt2")

# A chat template over the word tokenizer's vocabulary: assistant turns end with the EOS token, like
# ChatML's <|im_end|>, and the generation prompt ends with "Assistant :".
WORD_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Human : {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}Assistant : {{ m['content'] }}<eos> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant : {% endif %}"
)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 BPE (no pad token of its own: prepare_tokenizer reuses EOS)."""
    if not os.path.isdir(GPT2_DIR):
        pytest.skip(f"{GPT2_DIR} is absent (shared/ is not in a fresh clone)")
    from transformers import GPT2TokenizerFast

    return prepare_tokenizer(GPT2TokenizerFast.from_pretrained(GPT2_DIR))


@pytest.fixture(scope="session")
def chat_tokenizer():
    """The word tokenizer with a chat template, to exercise the template path."""
    tokenizer = build_word_tokenizer()
    tokenizer.chat_template = WORD_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def bos_tokenizer():
    """The word tokenizer adding a ``<bos>`` before every text, like LLaMA's tokenizer does."""
    tokenizer = build_word_tokenizer(vocabulary() + ["<bos>"])
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    bos_id = tokenizer.convert_tokens_to_ids("<bos>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)])
    return tokenizer


def write_records(path, records):
    """Write ``records`` to ``path`` in the format its extension names (.json, .jsonl, .csv, .parquet, +.gz)."""
    path = str(path)
    base = path[:-3] if path.endswith(".gz") else path
    if base.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
        return path
    if base.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif base.endswith(".csv"):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in records for k in r)))
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    else:
        text = json.dumps(records, indent=1)
    data = text.encode("utf-8")
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if path.endswith(".gz") else data)
    return path


def write_text(path, text):
    with open(str(path), "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


@pytest.fixture
def write(tmp_path):
    """``write("name.ext", records)`` -> the path of a file of those records in ``tmp_path``."""
    return lambda name, records: write_records(tmp_path / name, records)
