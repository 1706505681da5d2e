"""Perplexity of a causal LM on held-out text: ``exp(total NLL / predicted tokens)``.

Documents are tokenized as for PPO-ptx (``PretrainDataset``: leading special tokens, the text, EOS)
and cut into chunks of at most ``max_len`` tokens; every token but the first of a chunk is predicted.
The figure is per token of the model's own tokenizer, so it compares models that share a tokenizer.
"""

import math
import os
from typing import Dict, List, Optional, Union

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import PretrainDataset, SFTCollator
from ..data.readers import DataError, Record
from ..functional import log_probs_from_logits
from ..nn import Actor


def text_documents(path: str) -> Union[str, List[Record]]:
    """A ``.txt`` file as ``{"text"}`` records, one per block of lines separated by a blank line; any other
    path unchanged (``PretrainDataset`` reads ``{"text"}`` JSON lines, JSON, CSV and Parquet)."""
    if not path.endswith(".txt"):
        return path
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({err})") from err
    blocks = [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    documents = [{"text": block} for block in blocks if block]
    if not documents:
        raise DataError(f"{path}: no text")
    return documents


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Summed negative log-likelihood and number of predicted tokens of right-padded sequences.

    Args:
        logits: (B, T, V) next-token logits; input_ids, attention_mask: (B, T).
    Returns:
        (total NLL, token count), two 0-d tensors.
    """
    log_probs = log_probs_from_logits(logits[:, :-1], input_ids[:, 1:])  # (B, T - 1)
    mask = attention_mask[:, 1:].to(log_probs.dtype)  # (B, T - 1): real tokens after the first
    return -(log_probs * mask).sum(), mask.sum()


@torch.no_grad()
def perplexity(actor: Actor, tokenizer, source: str, max_len: int = 512, batch_size: int = 4,
               max_documents: Optional[int] = None, skip_invalid: bool = False, device: str = "cpu") -> Dict[str, float]:
    """Perplexity of ``actor`` on the documents of ``source`` (see the module docstring).

    Returns ``perplexity``, ``nll`` (mean per predicted token, nats), ``tokens`` (predicted tokens) and
    ``chunks``.
    """
    documents = text_documents(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else source
    dataset = PretrainDataset(documents, tokenizer, max_len=max_len, max_datasets_size=max_documents,
                              skip_invalid=skip_invalid)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=SFTCollator(tokenizer.pad_token_id))
    actor.eval()
    total, count = 0.0, 0.0
    for batch in tqdm(loader, desc="perplexity", leave=False):
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        nll, n = sequence_nll(actor(input_ids, attention_mask), input_ids, attention_mask)
        total, count = total + float(nll), count + float(n)
    mean_nll = total / count
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": int(count), "chunks": len(dataset)}
