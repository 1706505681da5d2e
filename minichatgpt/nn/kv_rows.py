"""Row surgery on a KV cache for continuous batching: left-pad, concatenate, trim.

A running batch keeps one ``transformers`` ``DynamicCache`` whose rows are left-padded to a common
length. A request that joins is prefilled on its own and its cache rows are concatenated to the
running ones after both are left-padded to the longer length; when rows leave, the leading columns
that are padding in every remaining row are cut off. Padding is always on the left, so each row's
real tokens are its rightmost columns and the attention mask (and ALiBi, and per-row position ids)
describe the same sequence as the row run alone.

:class:`RunningRows` is the one decode step of the project: ``generate()`` (rollouts, evaluation) and
:class:`minichatgpt.nn.decoding.DecodeBatch` (chat, serving) both keep their running rows in it, drop
finished rows with :meth:`RunningRows.keep` and feed the next tokens with :meth:`RunningRows.advance`.
"""

import torch
import torch.nn.functional as F


def select_cache_rows(cache, index: torch.Tensor):
    """Keep the rows ``index`` of a KV cache's batch dimension: a ``transformers`` ``Cache`` (in place,
    ``batch_select_indices``) or the legacy tuple of per-layer (key, value) tuples."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(index)
        return cache
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None or any(not hasattr(layer, "keys") or getattr(layer, "is_sliding", False) for layer in layers):
        raise TypeError(f"continuous batching needs a transformers DynamicCache with full-attention layers; "
                        f"got {type(cache).__name__}")
    return layers


def pad_cache_left(cache, columns: int):
    """Add ``columns`` zero key/value positions before every row (in place); masked out by the caller."""
    if columns > 0:
        for layer in _layers(cache):
            layer.keys = F.pad(layer.keys, (0, 0, columns, 0))  # (B, H, T + columns, D)
            layer.values = F.pad(layer.values, (0, 0, columns, 0))
    return cache


def concat_caches(cache, other):
    """Rows of ``other`` appended after the rows of ``cache`` (same length; in place on ``cache``)."""
    for layer, extra in zip(_layers(cache), _layers(other)):
        layer.keys = torch.cat([layer.keys, extra.keys], dim=0)  # (B + B', H, T, D)
        layer.values = torch.cat([layer.values, extra.values], dim=0)
    return cache


def trim_cache_left(cache, columns: int):
    """Drop the first ``columns`` positions of every row (in place)."""
    if columns > 0:
        for layer in _layers(cache):
            layer.keys = layer.keys[:, :, columns:]
            layer.values = layer.values[:, :, columns:]
    return cache


def pad_mask_left(attention_mask: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, T) -> (B, columns + T) with zeros in front."""
    return F.pad(attention_mask, (columns, 0)) if columns > 0 else attention_mask


class RunningRows:
    """The rows of a decode loop's running forward: (L, V) float logits of their next token, their KV cache,
    (L, T) attention mask and (L, 1) next positions. ``forward(ids, mask, positions, cache)`` returns the
    next logits and the cache (:class:`minichatgpt.nn.generation.DecodeForward`)."""

    def __init__(self, forward, logits: torch.Tensor, cache, attention_mask: torch.Tensor, next_position: torch.Tensor):
        self.forward, self.logits, self.cache = forward, logits, cache
        self.attention_mask, self.next_position = attention_mask, next_position

    def __len__(self) -> int:
        return self.logits.size(0)

    def keep(self, index: torch.Tensor, trim: bool = False) -> None:
        """Keep the rows ``index`` (their cache rows too); with ``trim``, cut the leading columns that are
        now padding in every row (needs a ``DynamicCache``)."""
        self.cache = select_cache_rows(self.cache, index)
        self.attention_mask, self.next_position, self.logits = (
            t.index_select(0, index) for t in (self.attention_mask, self.next_position, self.logits))
        unused = int((self.attention_mask.sum(0) == 0).long().cumprod(0).sum()) if trim else 0  # all-pad columns
        if unused:
            self.cache = trim_cache_left(self.cache, unused)
            self.attention_mask = self.attention_mask[:, unused:]

    def join(self, other: "RunningRows") -> None:
        """Append the rows of ``other`` (same forward), both left-padded to the longer of the two."""
        width = max(self.attention_mask.size(1), other.attention_mask.size(1))
        pad, pad_other = width - self.attention_mask.size(1), width - other.attention_mask.size(1)
        self.cache = concat_caches(pad_cache_left(self.cache, pad), pad_cache_left(other.cache, pad_other))
        self.attention_mask = torch.cat([pad_mask_left(self.attention_mask, pad),
                                         pad_mask_left(other.attention_mask, pad_other)])
        self.next_position = torch.cat([self.next_position, other.next_position])  # (L + N, 1)
        self.logits = torch.cat([self.logits, other.logits])  # (L + N, V)

    def advance(self, tokens: torch.Tensor, column: torch.Tensor = None) -> None:
        """Feed (L,) ``tokens``, one per row (mask column ``column``, default 1), and keep the next logits."""
        column = torch.ones_like(tokens) if column is None else column
        self.attention_mask = torch.cat([self.attention_mask, column.unsqueeze(1)], dim=1)  # (L, T + 1)
        self.logits, self.cache = self.forward(tokens.unsqueeze(1), self.attention_mask, self.next_position,
                                               self.cache)
        self.next_position = self.next_position + 1
