"""Inference generation: one prompt at a time over the KV cache, text streamed as soon as it decodes.

Training rollouts (``minichatgpt.nn.generation``) batch left-padded prompts and keep log-probs. Serving
needs other things: printable text deltas per token (a token can end in the middle of a UTF-8
character), stop strings, a per-request seed, and a way to stop early when the reader goes away.
The cache-argument helper is shared with the rollout code.
"""

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from ..nn.generation import accepts_logits_to_keep, cache_argument, sample_tokens
from ..tokenizer import Message, encode_prompt, leading_special_ids, plain_text_ids
from ..tokenizer import stop_token_ids as reply_stop_ids

DEFAULT_CONTEXT_WINDOW = 2048
PREFIX_CONTEXT_TOKENS = 4  # prompt tokens decoded with the first reply tokens, for their leading space
_WINDOW_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass
class GenerationOptions:
    """Decoding controls shared by the chat loop, the server and the example script.

    Attributes:
        max_new_tokens: upper bound on generated tokens (also clipped to the context window).
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling mass in (0, 1]; 1 keeps the whole distribution.
        stop: strings that end the reply; the stop string itself is not returned.
        seed: seed of this request's sampler, for repeatable samples; None draws a fresh one.
    """

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: Tuple[str, ...] = ()
    seed: Optional[int] = None


class TextDelta(NamedTuple):
    """One step of a streamed reply."""

    text: str  # newly printable text, possibly ""
    completion_tokens: int  # tokens generated so far
    finish_reason: Optional[str]  # None while generating; "stop" (EOS or stop string) or "length" at the end


class PromptTooLongError(ValueError):
    """The prompt leaves no room for a reply inside the model's context window."""


def context_window(model: nn.Module, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> int:
    """The longest sequence (prompt + reply) the model was built for.

    Read from the config (``max_position_embeddings``, GPT-2's ``n_positions``...); models without
    learned positions (BLOOM's ALiBi) fall back to the tokenizer's ``model_max_length`` when that is a
    real number, then to 2048.
    """
    config = getattr(model, "config", None)
    for name in _WINDOW_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return DEFAULT_CONTEXT_WINDOW


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Set[int]:
    """Token ids that end a reply: the tokenizer's EOS, the chat template's turn terminator and the
    model's generation-config EOS ids (see ``minichatgpt.tokenizer.stop_token_ids``)."""
    return set(reply_stop_ids(tokenizer, getattr(model, "generation_config", None)))


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> List[int]:
    """Token ids of a conversation awaiting the assistant's reply (chat template or plain format).

    Special-token text inside messages is plain text (see :func:`minichatgpt.tokenizer.encode_prompt`).

    Raises:
        ValueError: a message holds special-token text that the chat template makes impossible to isolate.
    """
    return encode_prompt(tokenizer, messages)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> List[int]:
    """Token ids of a raw completion prompt: the tokenizer's leading specials (BOS), then the text as
    plain text (``"<|endoftext|>"`` typed in a prompt is text, not the special token)."""
    return leading_special_ids(tokenizer) + plain_text_ids(tokenizer, text)


def fit_messages(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message],
                 max_prompt_tokens: int) -> Tuple[List[Message], List[int]]:
    """Drop the oldest turns until the rendered conversation fits in ``max_prompt_tokens``.

    Leading system messages are always kept, and the kept history always starts at a user turn, so
    the model never sees a reply without its question.

    Returns:
        (kept messages, their prompt ids).

    Raises:
        PromptTooLongError: the system prompt and the last user turn alone are too long.
    """
    n_system = 0
    while n_system < len(messages) and messages[n_system]["role"] == "system":
        n_system += 1
    system, turns = list(messages[:n_system]), list(messages[n_system:])
    while True:
        ids = encode_chat(tokenizer, system + turns)
        if len(ids) <= max_prompt_tokens:
            return system + turns, ids
        if len(turns) <= 1:
            raise PromptTooLongError(f"the prompt is {len(ids)} tokens; at most {max_prompt_tokens} fit "
                                     f"the context window with room for the reply")
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]


def sample_next_token(logits: torch.Tensor, temperature: float, top_p: float,
                      generator: Optional[torch.Generator] = None) -> int:
    """The next token from (V,) logits: greedy at temperature 0, else nucleus sampling
    (``minichatgpt.nn.generation.sample_tokens``, the sampler the rollouts use too)."""
    return int(sample_tokens(logits.unsqueeze(0), temperature, 0, top_p, generator))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def generate_tokens(model: nn.Module, input_ids: Sequence[int], max_new_tokens: int, temperature: float,
                    top_p: float, stop_ids: Iterable[int] = (),
                    generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids, one forward pass of a single new token per step.

    The prompt goes through the model once; each later step feeds only the new token and the KV
    cache. The first stop token is yielded and ends the loop. The decorator (not a ``with`` block)
    keeps inference mode on only while this generator runs, never in the caller between yields.
    """
    stop_ids = set(stop_ids)
    cache_name = cache_argument(model)
    # Only the last position's logits are needed; skipping the rest saves a (T, V) tensor per prompt.
    kwargs = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=model_device(model))  # (1, T)
    out = model(input_ids=ids, use_cache=True, **kwargs)
    for _ in range(max_new_tokens):
        token = sample_next_token(out.logits[0, -1], temperature, top_p, generator)
        yield token
        if token in stop_ids:
            return
        ids = torch.tensor([[token]], dtype=torch.long, device=ids.device)  # (1, 1)
        out = model(input_ids=ids, use_cache=True, **kwargs, **{cache_name: getattr(out, cache_name)})


class IncrementalDecoder:
    """Turn a stream of token ids into a stream of text deltas.

    Decoding tokens one by one is wrong for byte-level and SentencePiece tokenizers (a character can
    span tokens, and spaces depend on the neighbour), and re-decoding everything each step costs
    O(n^2). So only a short window is decoded: the tokens since the last emitted text, plus the tokens
    just before them as context; the delta is what the new tokens add to the context's text. Text
    ending in U+FFFD (an unfinished UTF-8 sequence) is held back until the character completes.

    Args:
        prefix_ids: the last prompt tokens, context for the first generated token (so a completion
            of "The capital is" starts with " Paris", not "Paris").
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prefix_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids: List[int] = list(prefix_ids)
        self.context_start = 0  # first id of the context window
        self.emitted_end = len(self.ids)  # ids before this index have been turned into text

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        context = self._decode(self.ids[self.context_start:self.emitted_end])
        text = self._decode(self.ids[self.context_start:])
        if text.endswith("\ufffd") or len(text) <= len(context):
            return ""
        self.context_start, self.emitted_end = self.emitted_end, len(self.ids)
        return text[len(context):]

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character decodes as U+FFFD)."""
        context = self._decode(self.ids[self.context_start:self.emitted_end])
        text = self._decode(self.ids[self.context_start:])
        self.context_start = self.emitted_end = len(self.ids)
        return text[len(context):]


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _cut_at_stop(text: str, stops: Sequence[str]) -> Tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def stream_text(model: nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int],
                options: GenerationOptions, stop_ids: Optional[Iterable[int]] = None,
                cancelled: Optional[Callable[[], bool]] = None) -> Iterator[TextDelta]:
    """Generate a reply to ``input_ids`` and yield it as text deltas; the last delta has a finish reason.

    Args:
        input_ids: prompt token ids (one sequence, no padding).
        options: decoding controls; ``max_new_tokens`` is clipped to what the context window leaves.
        stop_ids: token ids that end the reply (default: :func:`stop_token_ids`); never shown.
        cancelled: polled after every token; when it returns True generation ends with ``"cancelled"``.

    Raises:
        PromptTooLongError: the prompt fills the context window.
    """
    room = context_window(model, tokenizer) - len(input_ids)
    if room <= 0:
        raise PromptTooLongError(f"the prompt is {len(input_ids)} tokens, the context window "
                                 f"{context_window(model, tokenizer)}")
    stop_ids = stop_token_ids(model, tokenizer) if stop_ids is None else set(stop_ids)
    generator = None
    if options.seed is not None and options.temperature > 0:
        generator = torch.Generator(device=model_device(model)).manual_seed(options.seed)
    decoder = IncrementalDecoder(tokenizer, input_ids[-PREFIX_CONTEXT_TOKENS:])
    stops = [s for s in options.stop if s]
    pending, count, finish = "", 0, "length"
    for token in generate_tokens(model, input_ids, min(options.max_new_tokens, room), options.temperature,
                                 options.top_p, stop_ids, generator):
        count += 1
        if token in stop_ids:
            finish = "stop"
            break
        pending += decoder.push(token)
        pending, hit = _cut_at_stop(pending, stops)
        if hit:
            yield TextDelta(pending, count, "stop")
            return
        keep = _held_back(pending, stops)
        text, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
        if text:
            yield TextDelta(text, count, None)
        if cancelled is not None and cancelled():
            finish = "cancelled"
            break
    pending, hit = _cut_at_stop(pending + decoder.flush(), stops)
    yield TextDelta(pending, count, "stop" if hit else finish)


def generate_text(model: nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int],
                  options: GenerationOptions) -> Tuple[str, str, int]:
    """The whole reply at once: (text, finish_reason, completion_tokens)."""
    parts, last = [], None
    for last in stream_text(model, tokenizer, input_ids, options):
        parts.append(last.text)
    return "".join(parts), last.finish_reason, last.completion_tokens
