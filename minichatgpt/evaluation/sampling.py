"""Answers of a policy to every prompt of a file, and the policy's KL to a baseline on those answers."""

from typing import List, NamedTuple, Optional

import torch
from tqdm import tqdm

from ..data import PromptCollator, PromptDataset
from ..functional import compute_kl, log_probs_from_logits
from ..nn import Actor


class Samples(NamedTuple):
    """One sampled response per prompt. N prompts."""

    texts: List[str]  # decoded responses, special tokens (EOS) left out
    lengths: torch.Tensor  # (N,) response tokens, EOS included
    kl: Optional[torch.Tensor]  # (N,) summed per-token k1 KL to the baseline, or None without one


class SamplingSettings(NamedTuple):
    """How every policy of one comparison samples (the same for all, so that only the weights differ)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True
    seed: int = 42
    batch_size: int = 8


@torch.no_grad()
def sequence_kl(reference: Actor, sequences: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor,
                log_probs: torch.Tensor) -> torch.Tensor:
    """Summed k1 KL ``sum_t (log_probs_t - ref_log_probs_t)`` over each response's real tokens: (B,).

    Args:
        sequences, attention_mask: (B, P + A) prompts and the policy's sampled responses.
        action_mask: (B, A) 1 on response tokens; log_probs: (B, A) the policy's log-probs of them.
    """
    num_actions = action_mask.size(1)
    logits = reference(sequences, attention_mask, num_actions)  # (B, A, V)
    ref_log_probs = log_probs_from_logits(logits, sequences[:, -num_actions:])  # (B, A)
    return (compute_kl(log_probs, ref_log_probs, "k1") * action_mask).sum(-1)


@torch.no_grad()
def sample_responses(actor: Actor, tokenizer, prompts: PromptDataset, settings: SamplingSettings,
                     reference: Optional[Actor] = None, device: str = "cpu", desc: str = "sampling") -> Samples:
    """Answer every prompt once, in order, with a generator seeded by ``settings.seed``.

    Two models sampled with the same settings draw the same random numbers for the same prompts (same
    batches), so where their next-token distributions agree they pick the same tokens: the comparison
    sees the difference of the models, not of the dice.

    With ``reference``, also the KL of ``actor`` to it on these samples: the summed k1 estimator over the
    policy's own samples is an unbiased estimate of KL(policy || reference) per response when sampling is
    plain (temperature 1, no top-k/top-p); otherwise it is the mean log-ratio on the tempered samples.
    """
    actor.eval()
    if reference is not None:
        reference.eval()
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    collate = PromptCollator(tokenizer.pad_token_id)
    texts: List[str] = []
    lengths, kls = [], []
    starts = range(0, len(prompts), settings.batch_size)
    for start in tqdm(starts, desc=desc, leave=False):
        batch = collate([prompts[i] for i in range(start, min(start + settings.batch_size, len(prompts)))])
        rollout = actor.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                 max_new_tokens=settings.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, do_sample=settings.do_sample,
                                 temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                                 generator=generator)
        num_actions = rollout.action_mask.size(1)
        response_ids = rollout.sequences[:, -num_actions:].masked_fill(rollout.action_mask == 0, tokenizer.pad_token_id)
        texts += [t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
        lengths.append(rollout.action_mask.sum(-1).cpu())
        if reference is not None:
            kls.append(sequence_kl(reference, rollout.sequences, rollout.attention_mask, rollout.action_mask,
                                   rollout.log_probs).float().cpu())
    return Samples(texts, torch.cat(lengths), torch.cat(kls) if kls else None)
