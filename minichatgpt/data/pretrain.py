"""PPO-ptx data: plain text for the pretraining loss mixed into PPO (InstructGPT arXiv:2203.02155, eq. 2).

Records are ``{"text"}`` documents. Each document is tokenized with an EOS at its end (the document
boundary the model saw in pretraining) and split into consecutive chunks of at most ``max_len``
tokens; documents are not packed together, so no chunk spans two of them.
"""

from typing import Dict, List, Optional

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from minichatgpt.data.encoding import Encoder, check_max_len
from minichatgpt.data.fields import Format, detect_format, require
from minichatgpt.data.readers import DataError, InvalidRows, Source, load_rows, source_name

PRETRAIN_FORMATS = (Format("text", ("text",), "text"),)


class PretrainDataset(Dataset):
    """Language-modelling chunks; the loss is on every token (``labels == input_ids``).

    A trailing chunk of a single token is left out: with nothing to predict it would add no loss.

    Args:
        source: a path, a list of records or a dataset name (see ``read_records``).
        tokenizer: any Hugging Face tokenizer with an EOS token.
        max_len: the chunk length, in tokens.
        max_datasets_size: read only the first N records.
        skip_invalid: leave out invalid rows instead of failing on the first one; their number is
            warned about once and kept in ``num_invalid_skipped``.

    Items: ``{"input_ids": (T,) long, "labels": (T,) long}``, T <= max_len.
    """

    def __init__(self, source: Source, tokenizer: PreTrainedTokenizerBase, max_len: int = 512,
                 max_datasets_size: Optional[int] = None, skip_invalid: bool = False):
        check_max_len(max_len)
        encoder = Encoder(tokenizer)
        self.examples: List[Dict[str, torch.Tensor]] = []
        invalid = InvalidRows(source, skip_invalid)
        valid_documents = 0
        for where, record in load_rows(source, max_datasets_size, on_invalid=invalid.skip):
            with invalid.guard():
                detect_format(record, PRETRAIN_FORMATS, where)
                ids = encoder.document_ids(require(record, "text", where))
                valid_documents += 1
                for start in range(0, len(ids), max_len):
                    chunk = torch.tensor(ids[start:start + max_len], dtype=torch.long)  # (T,)
                    if chunk.numel() >= 2:
                        self.examples.append({"input_ids": chunk, "labels": chunk.clone()})
        invalid.report(valid_documents)
        self.num_invalid_skipped = invalid.count
        if not self.examples:
            raise DataError(f"{source_name(source)}: no text to train on (every document is empty)")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return self.examples[index]
