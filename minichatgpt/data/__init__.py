"""The data layer: records from files or the hub -> tokenized items of each stage -> padded batches.

``read_records`` reads a source; ``SFTDataset`` (stage 1), ``PreferenceDataset`` (stage 2),
``PromptDataset`` and ``PretrainDataset`` (stage 3, PPO and PPO-ptx) tokenize it; the collators pad
batches on an explicit side. Every data problem is a :class:`DataError` naming file, row and field.
"""

from minichatgpt.data.collate import (DPOCollator, PreferenceCollator, PromptCollator, RewardPromptCollator,
                                      SFTCollator, pad_sequences)
from minichatgpt.data.fields import (Format, check_messages, detect_format, invalid_field, missing_field, optional,
                                     require, split_dialogue, wrong_type)
from minichatgpt.data.preference import PreferenceDataset
from minichatgpt.data.pretrain import PretrainDataset
from minichatgpt.data.prompts import PromptDataset
from minichatgpt.data.readers import DataError, read_records
from minichatgpt.data.sft import SFTDataset

__all__ = [
    "DataError", "read_records",
    "SFTDataset", "PreferenceDataset", "PromptDataset", "PretrainDataset",
    "SFTCollator", "PreferenceCollator", "DPOCollator", "RewardPromptCollator", "PromptCollator", "pad_sequences",
    "Format", "detect_format", "require", "optional", "missing_field", "wrong_type", "invalid_field",
    "check_messages", "split_dialogue",
]
