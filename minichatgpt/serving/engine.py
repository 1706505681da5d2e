"""Inference generation for chat, the server and the examples: prompts, options and text deltas.

The decoding itself is the shared core (:mod:`minichatgpt.nn.decoding`: per-request sampling, EOS ids,
stop strings, seeds, text deltas that never split a UTF-8 character); this module turns chat messages
and ``GenerationOptions`` into its requests and its events into ``TextDelta`` s.
"""

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from ..nn.decoding import DecodeBatch, DecodeRequest, SamplingParams, TokenEvent
from ..nn.generation import sample_tokens
from ..nn.text_stream import IncrementalDecoder  # noqa: F401  (re-exported: tests and callers import it here)
from ..tokenizer import Message, encode_prompt, leading_special_ids, plain_text_ids
from ..tokenizer import stop_token_ids as reply_stop_ids

DEFAULT_CONTEXT_WINDOW = 2048
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


def generate_tokens(model: nn.Module, input_ids: Sequence[int], max_new_tokens: int, temperature: float,
                    top_p: float, stop_ids: Iterable[int] = (),
                    generator: Optional[torch.Generator] = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids for one prompt; the first stop token is yielded and ends it.

    A one-request run of the decode core (:class:`minichatgpt.nn.decoding.DecodeBatch`). ``generator``,
    when given, replaces the request's own (seeded or global) one.
    """
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    batch = DecodeBatch(model)
    batch.add([DecodeRequest(list(input_ids), params, tuple(stop_ids))])
    if generator is not None:
        batch.rows[0].generator = generator
    while len(batch):
        for _, event in batch.step():
            yield event.token


def decode_request(model: nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int],
                   options: GenerationOptions, stop_ids: Optional[Iterable[int]] = None,
                   key=None) -> DecodeRequest:
    """The decode-core request of a reply: text deltas, stop strings and ids, ``max_new_tokens`` clipped
    to what the context window leaves.

    Raises:
        PromptTooLongError: the prompt fills the context window.
    """
    window = context_window(model, tokenizer)
    if window - len(input_ids) <= 0:
        raise PromptTooLongError(f"the prompt is {len(input_ids)} tokens, the context window {window}")
    stop_ids = stop_token_ids(model, tokenizer) if stop_ids is None else set(stop_ids)
    params = SamplingParams(max_new_tokens=min(options.max_new_tokens, window - len(input_ids)),
                            temperature=options.temperature, top_p=options.top_p, seed=options.seed,
                            stop=tuple(options.stop))
    return DecodeRequest(list(input_ids), params, tuple(sorted(stop_ids)), tokenizer, key)


def text_delta(event: TokenEvent) -> TextDelta:
    return TextDelta(event.text, event.count, event.finish_reason)


def stream_text(model: nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int],
                options: GenerationOptions, stop_ids: Optional[Iterable[int]] = None,
                cancelled: Optional[Callable[[], bool]] = None) -> Iterator[TextDelta]:
    """Generate a reply to ``input_ids`` and yield it as text deltas; the last delta has a finish reason.

    Empty deltas (text held back) are not yielded, except the last.

    Args:
        input_ids: prompt token ids (one sequence, no padding).
        options: decoding controls; ``max_new_tokens`` is clipped to what the context window leaves.
        stop_ids: token ids that end the reply (default: :func:`stop_token_ids`); never shown.
        cancelled: polled after every token; when it returns True generation ends with ``"cancelled"``.

    Raises:
        PromptTooLongError: the prompt fills the context window.
    """
    batch = DecodeBatch(model)
    batch.add([decode_request(model, tokenizer, input_ids, options, stop_ids)])
    while len(batch):
        for _, event in batch.step():
            if event.text or event.finish_reason is not None:
                yield text_delta(event)
        if len(batch) and cancelled is not None and cancelled():
            yield text_delta(batch.cancel([None])[0][1])


def generate_text(model: nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int],
                  options: GenerationOptions) -> Tuple[str, str, int]:
    """The whole reply at once: (text, finish_reason, completion_tokens)."""
    parts, last = [], None
    for last in stream_text(model, tokenizer, input_ids, options):
        parts.append(last.text)
    return "".join(parts), last.finish_reason, last.completion_tokens
