"""Token ids to printable text deltas, with stop strings: the text side of the decode core.

Used by :mod:`minichatgpt.nn.decoding` for every request that has a tokenizer (chat, serve, examples);
rollouts that only need token ids skip it.
"""

from typing import List, Sequence, Tuple

from transformers import PreTrainedTokenizerBase


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


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def cut_at_stop(text: str, stops: Sequence[str]) -> Tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class TextStream:
    """One reply's text: deltas as tokens arrive, cut at the first stop string.

    Text that could be the beginning of a stop string is held back until it is known not to be one,
    so a client never sees part of a stop string. The stop string itself is never returned.

    Args:
        prefix_ids: the last prompt tokens (see :class:`IncrementalDecoder`).
        stops: stop strings; empty ones are ignored.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prefix_ids: Sequence[int] = (),
                 stops: Sequence[str] = ()):
        self.decoder = IncrementalDecoder(tokenizer, prefix_ids)
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, token_id: int) -> Tuple[str, bool]:
        """(newly printable text, whether a stop string ended the reply) after one more token."""
        self.pending, hit = cut_at_stop(self.pending + self.decoder.push(token_id), self.stops)
        if hit:
            text, self.pending = self.pending, ""
            return text, True
        keep = held_back(self.pending, self.stops)
        text, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return text, False

    def finish(self) -> Tuple[str, bool]:
        """The rest of the text when the reply ends for another reason, and whether it held a stop string."""
        text, hit = cut_at_stop(self.pending + self.decoder.flush(), self.stops)
        self.pending = ""
        return text, hit
