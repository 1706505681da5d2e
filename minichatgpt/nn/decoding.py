"""The decode core of chat and serving: a running batch that requests join and leave at token boundaries.

Each request brings its own sampling parameters (temperature, top-k, top-p, seed), EOS ids, stop
strings and token budget. Every :meth:`DecodeBatch.step` samples one token per running row with the
shared sampler (:func:`minichatgpt.nn.generation.sample_tokens`), reports it with its log-probability
and text delta, drops the rows that finished (their KV-cache rows too) and runs one forward for the
rest. ``generate()`` (rollouts, evaluation) drives the same step for one batch that starts together:
both keep their running rows in :class:`minichatgpt.nn.kv_rows.RunningRows` (drop rows, feed one token,
one :class:`minichatgpt.nn.generation.DecodeForward`) and use the same sampler and log-probs.

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
from .generation import MIN_TEMPERATURE, DecodeForward, position_ids_from_mask, sample_tokens
from .kv_rows import RunningRows
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
        self.model, self.forward = model, DecodeForward(model)
        self.device = next(model.parameters()).device
        self._clear()

    def _clear(self) -> None:
        self.rows: List[_Row] = []
        self.running: Optional[RunningRows] = None  # the rows' logits, KV cache, mask and positions

    @property
    def cache(self):
        return None if self.running is None else self.running.cache

    @property
    def attention_mask(self) -> Optional[torch.Tensor]:
        return None if self.running is None else self.running.attention_mask  # (L, T)

    def __len__(self) -> int:
        return len(self.rows)

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
        logits, cache = self.forward(ids, mask, positions, None)
        joining = RunningRows(self.forward, logits, cache, mask, positions[:, -1:] + 1)
        if self.running is None:
            self.running = joining
        else:
            self.running.join(joining)
        self.rows += [_Row(r, self.device) for r in requests]

    @torch.inference_mode()
    def _keep_rows(self, index: List[int]) -> None:
        """Keep only the rows ``index``; cut the leading columns that are now padding in every row."""
        if not index:
            self._clear()
        elif len(index) < len(self.rows):
            self.running.keep(torch.tensor(index, device=self.device), trim=True)
            self.rows = [self.rows[i] for i in index]

    def cancel(self, keys: Sequence[Hashable]) -> List[Tuple[DecodeRequest, TokenEvent]]:
        """Remove the requests ``keys`` now; each gets a last event (held-back text, ``"cancelled"``)."""
        keys = set(keys)
        gone = [(row.request, TokenEvent(None, 0.0, row.finish_text()[0], row.count, "cancelled"))
                for row in self.rows if row.request.key in keys]
        self._keep_rows([i for i, row in enumerate(self.rows) if row.request.key not in keys])
        return gone

    def _sample(self) -> torch.Tensor:
        """(L,) next tokens, each row with its own parameters and generator."""
        logits = self.running.logits  # (L, V)
        tokens = logits.argmax(-1)
        for i, row in enumerate(self.rows):
            if not row.greedy:
                params = row.request.params
                tokens[i] = sample_tokens(logits[i:i + 1], params.temperature, params.top_k, params.top_p,
                                          row.generator)[0]
        return tokens

    @torch.inference_mode()
    def step(self) -> List[Tuple[DecodeRequest, TokenEvent]]:
        """One token for every running request; finished ones leave, the rest run one forward."""
        tokens = self._sample()  # (L,)
        log_probs = log_probs_from_logits(self.running.logits, tokens)  # (L,)
        events, running = [], []
        for i, (row, token, log_prob) in enumerate(zip(self.rows, tokens.tolist(), log_probs.tolist())):
            event = row.advance(token, log_prob)
            events.append((row.request, event))
            if event.finish_reason is None:
                running.append(i)
        self._keep_rows(running)
        if self.rows:
            self.running.advance(tokens[torch.tensor(running, device=self.device)])  # (L',) tokens
        return events
