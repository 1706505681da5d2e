"""Stage 2 data: ranked pairs for reward-model training (InstructGPT arXiv:2203.02155, section 3.5).

Record formats, detected per record:

* ``{"prompt", "chosen", "rejected"}`` strings (a prompt already written as ``"\\n\\nHuman: ...
  \\n\\nAssistant:"`` is parsed back into turns);
* ``{"instruction", "input" (optional), "chosen", "rejected"}``;
* ``{"conversations" | "messages": [turns ending with a user turn], "chosen", "rejected"}`` where
  the replies are ``{"from": "gpt", "value"}`` / ``{"role": "assistant", "content"}`` objects or strings;
* hh-rlhf ``{"chosen", "rejected"}`` full dialogues. Each is split at its last ``"\\n\\nAssistant:"``;
  the part before becomes chat messages, so the tokenizer's chat template applies. The two
  dialogues normally share that part; when they do not, each keeps its own.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from minichatgpt.data.encoding import Encoder, check_max_len
from minichatgpt.data.fields import (Format, check_messages, check_reply, detect_format, invalid_field, optional,
                                     prompt_messages, require, split_dialogue, user_text)
from minichatgpt.data.readers import DataError, InvalidRows, Record, Source, load_rows, source_name
from minichatgpt.tokenizer import Message

PREFERENCE_FORMATS = (
    Format("sharegpt", ("conversations",), "conversations, chosen, rejected"),
    Format("chat", ("messages",), "messages, chosen, rejected"),
    Format("instruction", ("instruction",), "instruction, chosen, rejected (+ input)"),
    Format("prompt", ("prompt",), "prompt, chosen, rejected"),
    Format("hh-rlhf", ("chosen",), "chosen, rejected as hh-rlhf dialogues"),
)

Side = Tuple[List[Message], str]  # (prompt messages, reply)


def preference_pair(record: Record, fmt: Format, where: str) -> Tuple[Side, Side]:
    """The (prompt messages, reply) of the chosen and of the rejected side of one record."""
    if fmt.name == "hh-rlhf":
        return tuple(split_dialogue(require(record, side, where), side, where) for side in ("chosen", "rejected"))
    if fmt.name in ("sharegpt", "chat"):
        field = fmt.keys[0]
        messages = check_messages(record[field], field, where)
        if messages[-1]["role"] != "user":
            raise invalid_field(where, field, f"must end with a user turn, got {messages[-1]['role']!r}")
        return tuple((messages, check_reply(require(record, side, where, (str, dict)), side, where))
                     for side in ("chosen", "rejected"))
    if fmt.name == "instruction":
        question = user_text(require(record, "instruction", where), optional(record, "input", where, default=""))
        messages = [{"role": "user", "content": question.strip()}]
    else:
        messages = prompt_messages(require(record, "prompt", where), where)
    return tuple((messages, require(record, side, where).strip()) for side in ("chosen", "rejected"))


class PreferenceDataset(Dataset):
    """Tokenized (chosen, rejected) pairs: each is prompt + response + EOS.

    Sequences longer than ``max_len`` lose the end of their response. A pair where either response
    is truncated away entirely (its prompt alone fills ``max_len``) is dropped and counted in
    ``num_truncated_away``: two sequences that differ only past the cut would teach nothing.

    Args:
        source: a path, a list of records or a dataset name (see ``read_records``).
        tokenizer: any Hugging Face tokenizer with an EOS token.
        max_len: the longest sequence kept, in tokens.
        max_datasets_size: read only the first N records.
        skip_invalid: leave out invalid rows instead of failing on the first one; their number is
            warned about once and kept in ``num_invalid_skipped``.

    Attributes:
        locations: the location of each item's record (``"data.jsonl:3"``, as ``load_rows`` names it),
            so that a report can read other fields of that record (e.g. RewardBench's ``subset``).

    Items: ``{"chosen_input_ids": (T_c,) long, "rejected_input_ids": (T_r,) long, "chosen_prompt_len": int,
    "rejected_prompt_len": int}`` (the prompt lengths let DPO score response tokens only).
    """

    def __init__(self, source: Source, tokenizer: PreTrainedTokenizerBase, max_len: int = 512,
                 max_datasets_size: Optional[int] = None, skip_invalid: bool = False):
        check_max_len(max_len)
        encoder = Encoder(tokenizer)
        self.examples: List[Dict[str, torch.Tensor]] = []
        self.locations: List[str] = []  # where each example's record sits ("data.jsonl:3"), for per-row reports
        self.num_truncated_away = 0
        invalid = InvalidRows(source, skip_invalid)
        for where, record in load_rows(source, max_datasets_size, on_invalid=invalid.skip):
            with invalid.guard():
                fmt = detect_format(record, PREFERENCE_FORMATS, where)
                (chosen_prompt, chosen), (rejected_prompt, rejected) = preference_pair(record, fmt, where)
                prompt_ids = encoder.prompt_ids(chosen_prompt, where)
                rejected_prompt_ids = prompt_ids if rejected_prompt == chosen_prompt else encoder.prompt_ids(
                    rejected_prompt, where)
                if max(len(prompt_ids), len(rejected_prompt_ids)) >= max_len:
                    self.num_truncated_away += 1
                    continue
                chosen_ids = (prompt_ids + encoder.response_ids(chosen))[:max_len]
                rejected_ids = (rejected_prompt_ids + encoder.response_ids(rejected))[:max_len]
                self.examples.append({"chosen_input_ids": torch.tensor(chosen_ids, dtype=torch.long),
                                      "rejected_input_ids": torch.tensor(rejected_ids, dtype=torch.long),
                                      "chosen_prompt_len": len(prompt_ids),
                                      "rejected_prompt_len": len(rejected_prompt_ids)})
                self.locations.append(where)
        invalid.report(len(self.examples) + self.num_truncated_away)
        self.num_invalid_skipped = invalid.count
        if not self.examples:
            raise DataError(f"{source_name(source)}: no pair left: all {self.num_truncated_away} pairs "
                            f"were truncated away by max_len={max_len}")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return self.examples[index]
