"""The ``Experience`` of one rollout batch, and generic split/collate/move over its fields.

Each field declares its kind in its metadata: ``sequence`` (B, T) tensors are a left-padded prompt
followed by a right-padded response; ``action`` (B, A) tensors are right-padded response positions;
``sample`` (B,) tensors have one value per row. Splitting trims each row to its real tokens, and
collating pads rows of different prompt and response lengths back into one aligned batch, so the
replay buffer can mix items from different rollouts.
"""

from dataclasses import dataclass, field, fields, replace
from typing import List

import torch

SEQUENCE, ACTION, SAMPLE = "sequence", "action", "sample"


def _kind(kind: str):
    return field(metadata={"kind": kind})


@dataclass
class Experience:
    """A batch of rollouts with everything PPO needs (InstructGPT arXiv:2203.02155, section 3.5)."""

    sequences: torch.Tensor = _kind(SEQUENCE)  # (B, T) prompt ids (left-padded) then response ids
    attention_mask: torch.Tensor = _kind(SEQUENCE)  # (B, T) 1 on real tokens
    action_mask: torch.Tensor = _kind(ACTION)  # (B, A) 1 on response tokens up to and including EOS
    log_probs: torch.Tensor = _kind(ACTION)  # (B, A) behaviour-policy log-probs (the PPO "old" ones)
    values: torch.Tensor = _kind(ACTION)  # (B, A) critic values at rollout time (the "old" values)
    returns: torch.Tensor = _kind(ACTION)  # (B, A) GAE returns, the critic's targets
    advantages: torch.Tensor = _kind(ACTION)  # (B, A) GAE advantages, whitened over real tokens
    scores: torch.Tensor = _kind(SAMPLE)  # (B,) reward-model scores (after normalization, before clipping)
    kl: torch.Tensor = _kind(SAMPLE)  # (B,) summed per-token KL to the reference over the response

    @property
    def num_actions(self) -> int:
        return self.action_mask.size(1)

    def to(self, device) -> "Experience":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def pin_memory(self) -> "Experience":
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def split(self) -> List["Experience"]:
        """One ``Experience`` per row (batch size 1), trimmed of prompt and response padding."""
        num_prompt = self.sequences.size(1) - self.num_actions
        items = []
        for i in range(self.sequences.size(0)):
            prompt_start = int(self.attention_mask[i, :num_prompt].long().argmax())  # first real prompt token
            length = int(self.action_mask[i].sum())
            trimmed = {}
            for f in fields(self):
                value = getattr(self, f.name)[i:i + 1]
                kind = f.metadata["kind"]
                if kind == SEQUENCE:
                    value = value[:, prompt_start:num_prompt + length]
                elif kind == ACTION:
                    value = value[:, :length]
                trimmed[f.name] = value
            items.append(Experience(**trimmed))
        return items


def collate_experiences(items: List[Experience], pad_token_id: int = 0) -> Experience:
    """Pad and stack experiences: prompts left-padded to the longest prompt, responses right-padded."""
    num_actions = max(item.num_actions for item in items)
    num_prompt = max(item.sequences.size(1) - item.num_actions for item in items)
    out = {}
    for f in fields(Experience):
        kind, rows = f.metadata["kind"], []
        for item in items:
            value = getattr(item, f.name)
            if kind == SEQUENCE:
                pad_value = pad_token_id if f.name == "sequences" else 0
                left = num_prompt - (value.size(1) - item.num_actions)
                right = num_actions - item.num_actions
                value = torch.nn.functional.pad(value, (left, right), value=pad_value)
            elif kind == ACTION:
                value = torch.nn.functional.pad(value, (0, num_actions - item.num_actions), value=0)
            rows.append(value)
        out[f.name] = torch.cat(rows, dim=0)
    return Experience(**out)
