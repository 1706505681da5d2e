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

Role injection. Message text is data, never markup: ``<|im_end|>`` typed in a user (or assistant, or
system) message must not become the special token, or a user could end their turn and write the
assistant's. :func:`render_prompt` records where each message's text lies in the rendered prompt, and
:func:`encode_rendered` tokenizes special-token text inside those spans as plain text while the template's
own control tokens stay special. Serving, ``chat`` and the training data all encode prompts this way.
"""

import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

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
    return render_prompt(tokenizer, messages).text


class RenderedPrompt(NamedTuple):
    """A rendered prompt and the character spans ``[start, end)`` of message text inside it.

    Spans are only recorded when some message contains special-token text (otherwise there is
    nothing to protect and ``content_spans`` is empty).
    """

    text: str
    content_spans: Tuple[Tuple[int, int], ...] = ()

    def tail(self, start: int) -> "RenderedPrompt":
        """The text from ``start`` on, with the spans moved (and clipped) to match."""
        spans = tuple((max(a - start, 0), b - start) for a, b in self.content_spans if b > start)
        return RenderedPrompt(self.text[start:], spans)


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> RenderedPrompt:
    """:func:`format_prompt`, plus where each message's text lies when it contains special-token text.

    Raises:
        ValueError: a message contains special-token text and the chat template rewrites message text
            (so it cannot be told apart from the template's own tokens); refusing is the safe answer.
    """
    messages = normalize_messages(messages)
    if not has_chat_template(tokenizer):
        text, spans = "", []
        for m in messages:
            head, content = ("\n\n" if text else "") + f"{PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: ", \
                f"{m['content']}"
            spans.append((len(text) + len(head), len(text) + len(head) + len(content)))
            text += head + content
        text += "\n\nAssistant:"
    else:
        text = _apply_template(tokenizer, messages)
        spans = []
    pattern = special_token_pattern(tokenizer)
    if pattern is None or not any(isinstance(m["content"], str) and pattern.search(m["content"]) for m in messages):
        return RenderedPrompt(text)
    if has_chat_template(tokenizer):
        spans = _template_spans(tokenizer, messages, text)
    return RenderedPrompt(text, tuple(spans))


def _apply_template(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


_SENTINEL = re.compile("\ue000([0-9]+)\ue001")  # private-use characters: in no vocabulary's special tokens


def _template_spans(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message],
                    text: str) -> List[Tuple[int, int]]:
    """Spans of message text in ``text``, found by rendering placeholders in place of the messages.

    The template's pieces around placeholder ``i`` are template text; what the real rendering holds
    between them is message ``i`` (exactly, or as the template rewrote it, e.g. stripped). A message
    whose rewritten form cannot be isolated this way is refused, not guessed.
    """
    def render(replace: Dict[int, str]) -> str:
        return _apply_template(tokenizer, [{**m, "content": replace.get(i, f"\ue000{i}\ue001")}
                                           for i, m in enumerate(messages)])

    skeleton = render({})
    slots = list(_SENTINEL.finditer(skeleton))
    indices = [int(s.group(1)) for s in slots]
    pieces = _SENTINEL.split(skeleton)[::2]  # template text around the placeholders, len(slots) + 1
    contents = [messages[i]["content"] for i in indices]
    exact = all(isinstance(c, str) for c in contents) and \
        "".join(map("".join, zip(pieces, contents))) + pieces[-1] == text
    if not exact:
        for k, i in enumerate(indices):  # the template rewrites some text: find each message's form alone
            alone = render({i: messages[i]["content"]})
            head, rest = "".join(p + s.group() for p, s in zip(pieces, slots[:k])) + pieces[k], \
                skeleton[slots[k].end():]
            if indices.count(i) != 1 or len(alone) < len(head) + len(rest) or not (
                    alone.startswith(head) and alone.endswith(rest)):
                raise ValueError(f"the chat template changes its own text with what messages[{i}] says, so "
                                 f"special-token text in the messages cannot be kept apart from its tokens")
            contents[k] = alone[len(head):len(alone) - len(rest)]
        if "".join(p + c for p, c in zip(pieces, contents)) + pieces[-1] != text:
            raise ValueError("the chat template renders messages differently together than alone; special-token "
                             "text inside them cannot be kept apart from the template's own tokens")
    spans, at = [], 0
    for piece, content in zip(pieces, contents):
        at += len(piece)
        spans.append((at, at + len(content)))
        at += len(content)
    return spans


def special_token_pattern(tokenizer: PreTrainedTokenizerBase) -> Optional["re.Pattern"]:
    """A regex matching the special tokens' texts, longest first (as the tokenizer's own matcher does)."""
    texts = set(tokenizer.all_special_tokens)
    texts.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    texts = sorted((t for t in texts if t), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts))) if texts else None


def plain_text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> List[int]:
    """Ids of ``text`` in which special-token text is ordinary text (no BOS, no special ids)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"] \
        if text else []


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> List[int]:
    """The ids the tokenizer puts before any text when asked to add special tokens (e.g. ``[bos]``)."""
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start:start + len(plain)] == plain:
            return with_specials[:start]
    return []


def encode_rendered(tokenizer: PreTrainedTokenizerBase, rendered: RenderedPrompt,
                    add_special_tokens: bool = False) -> List[int]:
    """Token ids of a rendered prompt: special tokens only where the template wrote them.

    With no special-token text inside message spans this is exactly ``tokenizer(text)``. Otherwise the
    text is cut at the template's own special tokens (as the tokenizer itself does first) and each piece
    is tokenized with special-token text read as plain text.
    """
    text, spans = rendered.text, rendered.content_spans
    pattern = special_token_pattern(tokenizer) if spans else None
    matches = list(pattern.finditer(text)) if pattern is not None else []
    legit = [m for m in matches if not any(m.start() < b and a < m.end() for a, b in spans)]
    if len(legit) == len(matches):
        return tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    ids = leading_special_ids(tokenizer) if add_special_tokens else []
    at = 0
    for match in legit:
        ids += plain_text_ids(tokenizer, text[at:match.start()]) + [tokenizer.convert_tokens_to_ids(match.group())]
        at = match.end()
    return ids + plain_text_ids(tokenizer, text[at:])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> List[int]:
    """Ids of the prompt awaiting the assistant's reply to ``messages`` (see :func:`encode_rendered`).

    A chat template writes its own BOS, so the tokenizer's leading specials are only added for the plain
    format.
    """
    return encode_rendered(tokenizer, render_prompt(tokenizer, messages),
                           add_special_tokens=not has_chat_template(tokenizer))


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
