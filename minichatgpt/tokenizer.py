"""Tokenizer set-up and prompt formatting shared by every stage.

Two prompt formats exist:

* the tokenizer's own chat template (``tokenizer.chat_template``), used whenever the tokenizer has one;
* otherwise the plain format of the original project::

      Human: <user turn>
      Assistant: <assistant turn>

  turns joined by blank lines, a prompt ending with ``"\\n\\nAssistant:"`` and responses starting with a
  space. The response is followed by the EOS token in SFT and RM data.

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


def format_response(tokenizer: PreTrainedTokenizerBase, response: str) -> str:
    """The text that follows ``format_prompt`` for a given assistant reply, EOS included."""
    if has_chat_template(tokenizer):
        return response + tokenizer.eos_token
    return " " + response.strip() + tokenizer.eos_token
