"""Stage 1 data: supervised fine-tuning demonstrations with the loss on response tokens only.

Record formats, detected per record:

* Alpaca ``{"instruction", "input" (optional), "output"}``: the user message is the instruction, plus
  a blank line and the input when there is one. Self-instruct seed tasks, ``{"instruction",
  "instances": [{"input", "output"}, ...]}``, give one example per instance.
* ``{"prompt", "completion"}`` (or ``"response"``).
* Chat ``{"messages": [{"role", "content"}, ...]}`` or ShareGPT ``{"conversations": [{"from",
  "value"}, ...]}``: the loss is on every assistant turn, everything else is masked.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from minichatgpt.data.encoding import Encoder, check_max_len
from minichatgpt.data.fields import (Format, check_instances, check_messages, detect_format, optional,
                                     prompt_messages, require, require_any, user_text)
from minichatgpt.data.readers import DataError, InvalidRows, Record, Source, load_rows, source_name
from minichatgpt.functional import IGNORE_INDEX
from minichatgpt.tokenizer import Message

SFT_FORMATS = (
    Format("alpaca", ("instruction",), "instruction, output | instances (+ input)"),
    Format("completion", ("prompt",), "prompt, completion | response"),
    Format("chat", ("messages",), "messages"),
    Format("sharegpt", ("conversations",), "conversations"),
)


def sft_conversations(record: Record, fmt: Format, where: str) -> List[Tuple[List[Message], str]]:
    """The conversations of one record, each ``(messages, field)``; ``field`` names it in errors."""
    if fmt.name == "alpaca":
        instruction = require(record, "instruction", where)
        if "output" not in record and record.get("instances") is not None:
            return [(_exchange(user_text(instruction, extra), output), "instances")
                    for extra, output in check_instances(record, where, with_output=True)]
        extra = optional(record, "input", where, default="")
        return [(_exchange(user_text(instruction, extra), require(record, "output", where)), "output")]
    if fmt.name == "completion":
        prompt = require(record, "prompt", where)
        field, completion = require_any(record, ("completion", "response"), where)
        return [(prompt_messages(prompt, where) + [_reply(completion)], field)]
    field = fmt.keys[0]
    return [(check_messages(record[field], field, where), field)]


def _exchange(question: str, answer: str) -> List[Message]:
    return [{"role": "user", "content": question.strip()}, _reply(answer)]


def _reply(answer: str) -> Message:
    return {"role": "assistant", "content": answer.strip()}


class SFTDataset(Dataset):
    """Tokenized demonstrations; labels are ``IGNORE_INDEX`` everywhere but on response tokens.

    Truncation to ``max_len`` cuts the end of the sequence: the response loses its end (in a
    conversation, the later turns go first). A record whose response would be truncated away
    entirely, because its prompt alone fills ``max_len``, is dropped and counted in
    ``num_truncated_away`` instead of being cut at its start: an answer to a question whose
    beginning is missing teaches the wrong thing.

    Args:
        source: a path, a list of records or a dataset name (see ``read_records``).
        tokenizer: any Hugging Face tokenizer with an EOS token.
        max_len: the longest sequence kept, in tokens.
        max_datasets_size: read only the first N records.
        skip_invalid: leave out invalid rows instead of failing on the first one; their number is
            warned about once and kept in ``num_invalid_skipped``.

    Items: ``{"input_ids": (T,) long, "labels": (T,) long}``.
    """

    def __init__(self, source: Source, tokenizer: PreTrainedTokenizerBase, max_len: int = 512,
                 max_datasets_size: Optional[int] = None, skip_invalid: bool = False):
        check_max_len(max_len)
        encoder = Encoder(tokenizer)
        self.examples: List[Dict[str, torch.Tensor]] = []
        self.num_truncated_away = 0
        invalid = InvalidRows(source, skip_invalid)
        for where, record in load_rows(source, max_datasets_size, on_invalid=invalid.skip):
            with invalid.guard():  # a record is kept whole or not at all
                fmt = detect_format(record, SFT_FORMATS, where)
                sequences = [encoder.conversation_ids(messages, field, where)
                             for messages, field in sft_conversations(record, fmt, where)]
                for ids, is_response in sequences:
                    ids, is_response = ids[:max_len], is_response[:max_len]
                    if not any(is_response):
                        self.num_truncated_away += 1
                        continue
                    input_ids = torch.tensor(ids, dtype=torch.long)  # (T,)
                    labels = input_ids.masked_fill(~torch.tensor(is_response), IGNORE_INDEX)  # (T,)
                    self.examples.append({"input_ids": input_ids, "labels": labels})
        invalid.report(len(self.examples) + self.num_truncated_away)
        self.num_invalid_skipped = invalid.count
        if not self.examples:
            raise DataError(f"{source_name(source)}: no example left: all {self.num_truncated_away} responses "
                            f"were truncated away by max_len={max_len}")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return self.examples[index]
