"""Tokenizer set-up and prompt formatting shared by every stage.

Two prompt formats exist:

* the tokenizer's own chat template (``tokenizer.chat_template``), used whenever the tokenizer has one;
* otherwise the plain format of the original project::

      Human: <user turn>
      Assistant: <assistant turn>

  turns joined by blank lines, a prompt ending with ``"\\n\\nAssistant:"`` and responses starting with a
  space. The response is followed by its end token in SFT and RM data: the chat template's turn
  terminator (``turn_terminator``) when it has one, else the EOS token.

Padding conventions: prompts are left-padded for generation (so every row's last position is the
last prompt token), training batches are right-padded. Collators pick the side explicitly, so the
tokenizer's own ``padding_side`` does not matter.
"""

from typing import Dict, List, Optional, Sequence

from transformers import PreTrainedTokenizerBase

PLAIN_ROLES = {"user": "Human", "human": "Human", "assistant": "Assistant", "gpt": "Assistant",
               "system": "System"}

Message = Dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, eos_token: Optional[str] = None,
                      pad_token: Optional[str] = None) -> PreTrainedTokenizerBase:
    """Make a tokenizer ready for training: an EOS token and a pad token always exist.

    LLaMA, GPT-2 and GGUF tokenizers ship without a pad token. The fallback order is: the explicit
    ``pad_token``, the unknown token, then EOS. Padding positions are always masked out, so reusing
    EOS as pad is safe; generation finds the *first* EOS of a response, not the first pad.

    Args:
        tokenizer: any Hugging Face tokenizer; modified in place and returned.
        eos_token: override for the end-of-sequence token (e.g. ``"<|im_end|>"`` for chat models).
        pad_token: override for the pad token.
    """
    if eos_token is not None:
        tokenizer.eos_token = eos_token
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token; pass eos_token=")
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def normalize_messages(messages: Sequence[Message]) -> List[Message]:
    """Accept ``{"role", "content"}`` and ShareGPT ``{"from", "value"}`` turns; return role/content."""
    out = []
    for turn in messages:
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        role = {"human": "user", "gpt": "assistant"}.get(role, role)
        out.append({"role": role, "content": content})
    return out


def format_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """Render a conversation that ends with a user turn as a prompt awaiting the assistant's reply.

    Uses the chat template when the tokenizer has one, otherwise the plain Human/Assistant format.
    """
    messages = normalize_messages(messages)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = [f"{PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nAssistant:"


def format_response(tokenizer: PreTrainedTokenizerBase, response: str, end_token: Optional[str] = None) -> str:
    """The text that follows ``format_prompt`` for a given assistant reply, its end token included.

    ``end_token``: the token that ends the reply; ``turn_end_token(tokenizer)`` when not given.
    """
    end_token = end_token if end_token is not None else turn_end_token(tokenizer)
    if has_chat_template(tokenizer):
        return response + end_token
    return " " + response.strip() + end_token


_PROBE = "minichatgpt-reply-probe"


def turn_terminator(tokenizer: PreTrainedTokenizerBase) -> Optional[str]:
    """The special token the chat template writes right after an assistant message, or None.

    Read from the rendered template, since it is often not the tokenizer's EOS: Llama-3 ends turns with
    ``<|eot_id|>`` (EOS ``<|end_of_text|>``), Gemma with ``<end_of_turn>``, Phi-3 with ``<|end|>``.
    None without a template, or when the template ends turns with plain text.
    """
    if not has_chat_template(tokenizer):
        return None
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 (a template may reject this conversation in its own ways)
        return None
    if not isinstance(text, str) or _PROBE not in text:
        return None
    after = text.split(_PROBE, 1)[1].lstrip(" ")
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    matches = [token for token in specials if token and after.startswith(token)]
    return max(matches, key=len) if matches else None


def turn_end_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """The token that ends an assistant reply: the template's terminator, else the tokenizer's EOS."""
    return turn_terminator(tokenizer) or tokenizer.eos_token


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config=None) -> List[int]:
    """Every token id that ends a reply: the tokenizer's EOS, the chat template's turn terminator and
    the EOS ids of the model's generation config (an int or a list, e.g. Llama-3's two)."""
    ids = [tokenizer.eos_token_id]
    terminator = turn_terminator(tokenizer)
    if terminator is not None:
        ids.append(tokenizer.convert_tokens_to_ids(terminator))
    extra = getattr(generation_config, "eos_token_id", None)
    ids += list(extra) if isinstance(extra, (list, tuple)) else [extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))
