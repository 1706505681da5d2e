"""Perplexity equals exp(mean NLL) computed token by token."""

import json
import math

import pytest
import torch

from minichatgpt.data.encoding import Encoder
from minichatgpt.evaluation import perplexity
from minichatgpt.nn import Actor

DOCS = ["the cat is sweet and gentle", "i think the dog is friendly , lovely and bright today", "cake"]


def hand_perplexity(actor, tokenizer, documents, max_len):
    encoder = Encoder(tokenizer)
    nll, count = 0.0, 0
    for doc in documents:
        ids = encoder.document_ids(doc)
        for start in range(0, len(ids), max_len):
            chunk = ids[start:start + max_len]
            if len(chunk) < 2:
                continue
            with torch.no_grad():
                log_probs = actor.model(input_ids=torch.tensor([chunk])).logits[0].log_softmax(-1)
            for t in range(1, len(chunk)):
                nll -= float(log_probs[t - 1, chunk[t]])
                count += 1
    return math.exp(nll / count), count


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_perplexity_is_exp_of_the_mean_token_nll(eval_model_dirs, eval_tokenizer, tmp_path, suffix):
    path = tmp_path / f"held_out{suffix}"
    if suffix == ".txt":
        path.write_text("\n\n".join(DOCS) + "\n")
    else:
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    actor = Actor(pretrained=eval_model_dirs["lm"]).eval()
    result = perplexity(actor, eval_tokenizer, str(path), max_len=6, batch_size=2)
    expected, count = hand_perplexity(actor, eval_tokenizer, DOCS, max_len=6)
    assert result["tokens"] == count
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert result["nll"] == pytest.approx(math.log(expected), rel=1e-5)
