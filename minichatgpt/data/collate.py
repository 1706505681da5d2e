"""Batch collators: pad each stage's items into rectangular tensors, on an explicit side.

Training batches are right-padded; prompts are left-padded so that every row's last position is its
last prompt token and generation continues all rows at the same position. The side is fixed here,
never read from the tokenizer, whose ``padding_side`` differs between models. The collators are
plain classes holding ints, so they pickle into ``DataLoader`` worker processes.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from minichatgpt.functional import IGNORE_INDEX

Batch = Dict[str, torch.Tensor]


def pad_sequences(sequences: Sequence[torch.Tensor], value: int, side: str,
                  length: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D tensors of different lengths into one (B, T) tensor.

    Args:
        sequences: B tensors of shape (T_i,).
        value: the fill value of padding positions.
        side: ``"right"`` (pad after the tokens) or ``"left"`` (pad before them).
        length: T, at least the longest sequence; the longest length when omitted.
    Returns:
        padded (B, T) with the dtype of the inputs, and attention_mask (B, T) long, 1 on real tokens.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    length = max(len(s) for s in sequences) if length is None else length
    padded = sequences[0].new_full((len(sequences), length), value)  # (B, T)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)  # (B, T)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        padded[row, span] = seq
        attention_mask[row, span] = 1
    return padded, attention_mask


def _check_pad(pad_token_id: int) -> int:
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r} (call prepare_tokenizer first)")
    return pad_token_id


class SFTCollator:
    """Right-pads SFT or pretraining items.

    Returns ``input_ids`` (B, T), ``attention_mask`` (B, T) and ``labels`` (B, T), the labels padded
    with ``IGNORE_INDEX`` so the LM loss skips padding whatever the pad id is.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = _check_pad(pad_token_id)

    def __call__(self, items: List[Batch]) -> Batch:
        input_ids, attention_mask = pad_sequences([it["input_ids"] for it in items], self.pad_token_id, "right")
        labels, _ = pad_sequences([it["labels"] for it in items], IGNORE_INDEX, "right")
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class PreferenceCollator:
    """Right-pads preference pairs; chosen and rejected share one length T.

    One T for both lets a reward model score the pair in a single (2B, T) forward pass. Returns
    ``chosen_input_ids``, ``chosen_attention_mask``, ``rejected_input_ids``, ``rejected_attention_mask``,
    each (B, T).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = _check_pad(pad_token_id)

    def __call__(self, items: List[Batch]) -> Batch:
        length = max(max(len(it["chosen_input_ids"]), len(it["rejected_input_ids"])) for it in items)
        batch = {}
        for side in ("chosen", "rejected"):
            ids, mask = pad_sequences([it[f"{side}_input_ids"] for it in items], self.pad_token_id, "right", length)
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = ids, mask
        return batch


class DPOCollator:
    """``PreferenceCollator``'s batch plus ``chosen_response_mask`` and ``rejected_response_mask`` (B, T)
    long, 1 on response tokens (after the prompt, before the padding), for sequence log-probs."""

    def __init__(self, pad_token_id: int):
        self.pairs = PreferenceCollator(pad_token_id)

    def __call__(self, items: List[Batch]) -> Batch:
        batch = self.pairs(items)
        positions = torch.arange(batch["chosen_input_ids"].size(1))[None]  # (1, T)
        for side in ("chosen", "rejected"):
            prompt_len = torch.tensor([it[f"{side}_prompt_len"] for it in items])[:, None]  # (B, 1)
            batch[f"{side}_response_mask"] = (positions >= prompt_len).long() * batch[f"{side}_attention_mask"]
        return batch


class PromptCollator:
    """Left-pads prompts for generation: ``input_ids`` (B, T) and ``attention_mask`` (B, T)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = _check_pad(pad_token_id)

    def __call__(self, items: List[Batch]) -> Batch:
        input_ids, attention_mask = pad_sequences([it["input_ids"] for it in items], self.pad_token_id, "left")
        return {"input_ids": input_ids, "attention_mask": attention_mask}


class RewardPromptCollator:
    """``PromptCollator``'s batch plus what reward functions take: ``prompts`` (the raw user turns) and
    ``columns`` (each other record field as a list over the batch; None where a record lacks it)."""

    def __init__(self, pad_token_id: int):
        self.prompts = PromptCollator(pad_token_id)

    def __call__(self, items: List[Batch]) -> Batch:
        batch = self.prompts(items)
        names = sorted({name for it in items for name in it.get("columns", {})})
        batch["prompts"] = [it.get("prompt", "") for it in items]
        batch["columns"] = {name: [it.get("columns", {}).get(name) for it in items] for name in names}
        return batch
