"""The decode core of chat and serving: a running batch that requests join and leave at token boundaries.

Each request brings its own sampling parameters (temperature, top-k, top-p, seed), EOS ids, stop
strings and token budget. Every :meth:`DecodeBatch.step` samples one token per running row with the
shared sampler (:func:`minichatgpt.nn.generation.sample_tokens`), reports it with its log-probability
and text delta, drops the rows that finished (their KV-cache rows too) and runs one forward for the
rest. ``generate()`` (rollouts, evaluation) is the same loop specialised to one batch that starts
together; both use the same sampler, log-prob, position and cache-row helpers.

Different prompt lengths in one batch: the rows share one ``DynamicCache`` left-padded to the longest
row (:mod:`minichatgpt.nn.kv_rows`). The attention mask marks each row's padding, and position ids are
passed per row (counting real tokens only), so every row computes what it would compute alone. BLOOM
takes no position ids; its ALiBi bias is built from the attention mask and is the same for a
left-padded row. This holds for GPT-2, OPT, BLOOM and LLaMA (and every model whose positions come
from ``position_ids`` or the mask); models with sliding-window cache layers are refused.
"""

from dataclasses import dataclass
from typing import Hashable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..functional import log_probs_from_logits
from .generation import (MIN_TEMPERATURE, accepts_logits_to_keep, accepts_position_ids, cache_argument,
                         position_ids_from_mask, sample_tokens, select_cache_rows)
from .kv_rows import concat_caches, pad_cache_left, pad_mask_left, trim_cache_left
from .text_stream import TextStream


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples.

    Attributes:
        max_new_tokens: the most tokens generated for the request.
        temperature: below ``MIN_TEMPERATURE`` (e.g. 0) the request decodes greedily.
        top_k, top_p: truncation of the distribution (0 and 1 keep all of it).
        seed: seed of the request's own generator, for repeatable samples; None uses the global RNG.
        stop: strings that end the reply (needs a tokenizer); never returned.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()


class DecodeRequest(NamedTuple):
    """A prompt waiting to join a batch. ``key`` identifies it in events and cancellations."""

    prompt_ids: Sequence[int]
    params: SamplingParams
    eos_token_ids: Tuple[int, ...] = ()
    tokenizer: object = None  # with one, events carry text deltas and stop strings apply
    key: Hashable = None


class TokenEvent(NamedTuple):
    """What one step produced for one request."""

    token: Optional[int]  # the sampled id; None for a request cancelled before sampling
    log_prob: float  # its log-probability under the raw logits (temperature 1, no truncation)
    text: str  # newly printable text (may be ""); EOS and stop strings are never included
    count: int  # tokens generated so far, this one included
    finish_reason: Optional[str]  # None while running; "stop" (EOS or stop string), "length" or "cancelled"


class _Row:
    """A request's state inside the batch: generator, text stream, token count."""

    def __init__(self, request: DecodeRequest, device: torch.device):
        self.request, self.count = request, 0
        params = request.params
        self.greedy = params.temperature < MIN_TEMPERATURE
        self.generator = None
        if params.seed is not None and not self.greedy:
            self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.text = None
        if request.tokenizer is not None:
            self.text = TextStream(request.tokenizer, list(request.prompt_ids)[-4:], params.stop)

    def finish_text(self) -> Tuple[str, bool]:
        return self.text.finish() if self.text is not None else ("", False)

    def advance(self, token: int, log_prob: float) -> TokenEvent:
        self.count += 1
        if token in self.request.eos_token_ids:
            return TokenEvent(token, log_prob, self.finish_text()[0], self.count, "stop")
        text, hit = self.text.push(token) if self.text is not None else ("", False)
        finish = "stop" if hit else None
        if finish is None and self.count >= self.request.params.max_new_tokens:
            rest, hit = self.finish_text()
            text, finish = text + rest, "stop" if hit else "length"
        return TokenEvent(token, log_prob, text, self.count, finish)


def _left_pad(prompts: Sequence[Sequence[int]], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids (pad id 0, masked) and attention mask of prompts left-padded to the longest."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[i, width - len(prompt):] = 1
    return ids, mask


class DecodeBatch:
    """The running batch of one model. Not thread-safe: one thread owns it (the server's worker)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.cache_name = cache_argument(model)
        self.use_position_ids = accepts_position_ids(model)
        # Only the last position's logits are sampled from: a prompt's (B, P, V) logits are never built.
        self.keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        self.device = next(model.parameters()).device
        self._clear()

    def _clear(self) -> None:
        self.rows: List[_Row] = []
        self.cache = self.attention_mask = self.next_position = self.logits = None

    def __len__(self) -> int:
        return len(self.rows)

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        kwargs = dict(self.keep)
        if self.use_position_ids:
            kwargs["position_ids"] = position_ids
        if cache is not None:
            kwargs[self.cache_name] = cache
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **kwargs)
        return out.logits[:, -1].float(), getattr(out, self.cache_name)  # (B, V), cache

    @torch.inference_mode()
    def add(self, requests: Sequence[DecodeRequest]) -> None:
        """Prefill ``requests`` (one forward, left-padded) and join them to the running rows."""
        if not requests:
            return
        empty = [r.key for r in requests if len(r.prompt_ids) == 0]
        if empty:
            raise ValueError(f"prompt_ids: empty prompt for request(s) {empty}")
        ids, mask = _left_pad([r.prompt_ids for r in requests], self.device)  # (N, P) each
        positions = position_ids_from_mask(mask)
        logits, cache = self._forward(ids, mask, positions, None)
        rows = [_Row(r, self.device) for r in requests]
        if self.cache is None:
            self.cache, self.attention_mask, self.logits = cache, mask, logits
            self.next_position, self.rows = positions[:, -1] + 1, rows
            return
        width = max(self.attention_mask.size(1), mask.size(1))
        pad_old, pad_new = width - self.attention_mask.size(1), width - mask.size(1)
        self.cache = concat_caches(pad_cache_left(self.cache, pad_old), pad_cache_left(cache, pad_new))
        self.attention_mask = torch.cat([pad_mask_left(self.attention_mask, pad_old), pad_mask_left(mask, pad_new)])
        self.next_position = torch.cat([self.next_position, positions[:, -1] + 1])  # (L + N,)
        self.logits = torch.cat([self.logits, logits])  # (L + N, V)
        self.rows += rows

    @torch.inference_mode()
    def _keep_rows(self, index: List[int]) -> None:
        """Keep only the rows ``index``; cut the leading columns that are now padding in every row."""
        if not index:
            self._clear()
            return
        if len(index) == len(self.rows):
            return
        rows = torch.tensor(index, device=self.device)
        self.cache = select_cache_rows(self.cache, rows)
        self.attention_mask, self.next_position, self.logits = (
            t.index_select(0, rows) for t in (self.attention_mask, self.next_position, self.logits))
        self.rows = [self.rows[i] for i in index]
        unused = int((self.attention_mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-pad columns
        if unused:
            self.cache = trim_cache_left(self.cache, unused)
            self.attention_mask = self.attention_mask[:, unused:]

    def cancel(self, keys: Sequence[Hashable]) -> List[Tuple[DecodeRequest, TokenEvent]]:
        """Remove the requests ``keys`` now; each gets a last event (held-back text, ``"cancelled"``)."""
        keys = set(keys)
        gone = [(row.request, TokenEvent(None, 0.0, row.finish_text()[0], row.count, "cancelled"))
                for row in self.rows if row.request.key in keys]
        self._keep_rows([i for i, row in enumerate(self.rows) if row.request.key not in keys])
        return gone

    def _sample(self) -> torch.Tensor:
        """(L,) next tokens, each row with its own parameters and generator."""
        tokens = self.logits.argmax(-1)
        for i, row in enumerate(self.rows):
            if not row.greedy:
                params = row.request.params
                tokens[i] = sample_tokens(self.logits[i:i + 1], params.temperature, params.top_k, params.top_p,
                                          row.generator)[0]
        return tokens

    @torch.inference_mode()
    def step(self) -> List[Tuple[DecodeRequest, TokenEvent]]:
        """One token for every running request; finished ones leave, the rest run one forward."""
        tokens = self._sample()  # (L,)
        log_probs = log_probs_from_logits(self.logits, tokens)  # (L,)
        events, running = [], []
        for i, (row, token, log_prob) in enumerate(zip(self.rows, tokens.tolist(), log_probs.tolist())):
            event = row.advance(token, log_prob)
            events.append((row.request, event))
            if event.finish_reason is None:
                running.append(i)
        self._keep_rows(running)
        if self.rows:
            tokens = tokens[torch.tensor(running, device=self.device)]  # (L',)
            self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(tokens).unsqueeze(1)], dim=1)
            self.logits, self.cache = self._forward(tokens.unsqueeze(1), self.attention_mask,
                                                    self.next_position.unsqueeze(1), self.cache)
            self.next_position = self.next_position + 1
        return events
