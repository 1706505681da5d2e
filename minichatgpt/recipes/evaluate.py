"""Evaluating a policy on held-out prompts: reward-model score, KL to a reference, and (for the
built-in task) the hidden ground-truth score."""

from typing import Callable, Dict, List, Optional

import torch

from ..data import PromptCollator
from ..functional import compute_kl, log_probs_from_logits
from ..nn import Actor, RewardModel
from ..tokenizer import encode_rendered, render_prompt, stop_token_ids


@torch.no_grad()
def evaluate_policy(actor: Actor, tokenizer, conversations: List[List[dict]], reference: Optional[Actor] = None,
                    reward_model: Optional[RewardModel] = None,
                    score_fn: Optional[Callable[[str, str], float]] = None, max_new_tokens: int = 32,
                    batch_size: int = 64, seed: int = 0, device: str = "cpu") -> Dict[str, float]:
    """Sample one response per conversation (temperature 1) and average what can be measured about it.

    Args:
        conversations: role/content messages, each ending with the user turn to answer.
        score_fn: ``score_fn(last user turn, response text)``, e.g. the built-in task's hidden rule.

    Returns the mean response length and, when the pieces are given, the reward-model score, the
    summed per-token KL to ``reference`` (k1, policy minus reference) and ``score_fn(prompt, response)``.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    collate = PromptCollator(tokenizer.pad_token_id)
    stop_ids = stop_token_ids(tokenizer, getattr(actor.model, "generation_config", None))
    totals: Dict[str, float] = {}
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start:start + batch_size]
        texts = [conversation[-1]["content"] for conversation in chunk]
        batch = collate([{"input_ids": torch.tensor(encode_rendered(tokenizer, render_prompt(tokenizer, c)))}
                         for c in chunk])
        rollout = actor.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                 max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id, generator=generator)
        num_actions = rollout.action_mask.size(1)
        values = {"response_length": rollout.action_mask.sum(-1).float()}
        if reference is not None:
            logits = reference(rollout.sequences, rollout.attention_mask, num_actions)
            ref_log_probs = log_probs_from_logits(logits, rollout.sequences[:, -num_actions:])
            values["kl_to_reference"] = (compute_kl(rollout.log_probs, ref_log_probs) * rollout.action_mask).sum(-1)
        if reward_model is not None:
            values["reward_model_score"] = reward_model(rollout.sequences, rollout.attention_mask)
        if score_fn is not None:
            response_ids = rollout.sequences[:, -num_actions:].masked_fill(rollout.action_mask == 0,
                                                                           tokenizer.pad_token_id)
            responses = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
            values["ground_truth"] = torch.tensor([score_fn(p, r) for p, r in zip(texts, responses)])
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + float(value.sum())
    return {name: total / len(conversations) for name, total in totals.items()}
