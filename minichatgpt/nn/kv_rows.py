"""Row surgery on a KV cache for continuous batching: left-pad, concatenate, trim.

A running batch keeps one ``transformers`` ``DynamicCache`` whose rows are left-padded to a common
length. A request that joins is prefilled on its own and its cache rows are concatenated to the
running ones after both are left-padded to the longer length; when rows leave, the leading columns
that are padding in every remaining row are cut off. Padding is always on the left, so each row's
real tokens are its rightmost columns and the attention mask (and ALiBi, and per-row position ids)
describe the same sequence as the row run alone.
"""

import torch
import torch.nn.functional as F


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
