"""Stage 3 data: prompts that the actor answers during PPO, and that evaluation reuses.

Record formats, detected per record:

* ``{"instruction", "input" (optional)}`` (Alpaca, InstructionWild); self-instruct seed tasks,
  ``{"instruction", "instances": [{"input"}, ...]}``, give one prompt per instance;
* ``{"prompt"}``;
* ``{"messages" | "conversations": [turns ending with a user turn]}``;
* hh-rlhf ``{"chosen"}`` dialogues: the prompt is everything up to the last Assistant turn.
"""

from typing import Dict, List, Optional

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from minichatgpt.data.encoding import Encoder, check_max_len
from minichatgpt.data.fields import (Format, check_instances, check_messages, detect_format, invalid_field, optional,
                                     prompt_messages, require, split_dialogue, user_text)
from minichatgpt.data.readers import InvalidRows, Record, Source, load_rows
from minichatgpt.tokenizer import Message

PROMPT_FORMATS = (
    Format("instruction", ("instruction",), "instruction (+ input | instances)"),
    Format("prompt", ("prompt",), "prompt"),
    Format("chat", ("messages",), "messages"),
    Format("sharegpt", ("conversations",), "conversations"),
    Format("hh-rlhf", ("chosen",), "chosen as an hh-rlhf dialogue"),
)
# Fields that make up the prompt; a record's other fields are its ``columns`` (for reward functions).
PROMPT_FIELDS = ("instruction", "input", "instances", "prompt", "messages", "conversations", "chosen", "rejected")


def prompt_conversations(record: Record, fmt: Format, where: str) -> List[List[Message]]:
    """The prompt conversations of one record (several only for self-instruct instances)."""
    if fmt.name == "instruction":
        instruction = require(record, "instruction", where)
        if record.get("input") is None and record.get("instances") is not None:
            extras = [extra for extra, _ in check_instances(record, where, with_output=False)]
        else:
            extras = [optional(record, "input", where, default="")]
        return [[{"role": "user", "content": user_text(instruction, extra).strip()}] for extra in extras]
    if fmt.name == "prompt":
        return [prompt_messages(require(record, "prompt", where), where)]
    if fmt.name == "hh-rlhf":
        return [split_dialogue(require(record, "chosen", where), "chosen", where)[0]]
    field = fmt.keys[0]
    messages = check_messages(record[field], field, where)
    if messages[-1]["role"] != "user":
        raise invalid_field(where, field, f"must end with a user turn, got {messages[-1]['role']!r}")
    return [messages]


class PromptDataset(Dataset):
    """Tokenized prompts, formatted to await the assistant's reply.

    Prompts longer than ``max_len`` keep their end (the question and the assistant header), with the
    tokenizer's leading special tokens still in front. Nothing is dropped.

    Args:
        source: a path, a list of records or a dataset name (see ``read_records``).
        tokenizer: any Hugging Face tokenizer with an EOS token.
        max_len: the longest prompt kept, in tokens (the scripts' ``max_input_len``).
        max_datasets_size: read only the first N records.
        skip_invalid: leave out invalid rows instead of failing on the first one; their number is
            warned about once and kept in ``num_invalid_skipped``.

    Attributes:
        prompts: the raw text of each item's (last) user turn, unformatted and untruncated, for
            evaluation and logs: ``format_prompt(tokenizer, [{"role": "user", "content": prompts[i]}])``
            is the item's prompt when it has a single turn.
        messages: the whole conversation of each item as role/content messages; multi-turn prompts
            (hh-rlhf, chat records) need these to be rendered again with their context.

    Items: ``{"input_ids": (T,) long, "prompt": the raw user turn, "columns": the record's other fields}``
    (``prompt`` and ``columns`` are what reward functions receive).
    """

    def __init__(self, source: Source, tokenizer: PreTrainedTokenizerBase, max_len: int = 512,
                 max_datasets_size: Optional[int] = None, skip_invalid: bool = False):
        check_max_len(max_len)
        encoder = Encoder(tokenizer)
        self.examples: List[Dict[str, torch.Tensor]] = []
        self.prompts: List[str] = []
        self.messages: List[List[Message]] = []
        invalid = InvalidRows(source, skip_invalid)
        for where, record in load_rows(source, max_datasets_size, on_invalid=invalid.skip):
            with invalid.guard():  # a record is kept whole or not at all
                fmt = detect_format(record, PROMPT_FORMATS, where)
                conversations = prompt_conversations(record, fmt, where)
                ids = [encoder.keep_tail(encoder.prompt_ids(messages, where), max_len) for messages in conversations]
                for prompt_ids, messages in zip(ids, conversations):
                    prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
                    columns = {k: v for k, v in record.items() if k not in PROMPT_FIELDS}
                    self.examples.append({"input_ids": torch.tensor(prompt_ids, dtype=torch.long), "prompt": prompt,
                                          "columns": columns})
                    self.prompts.append(prompt)
                    self.messages.append(messages)
        invalid.report(len(self.examples))
        self.num_invalid_skipped = invalid.count

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return self.examples[index]
