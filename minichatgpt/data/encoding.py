"""Text to token ids with an exact prompt/response boundary, shared by the datasets of every stage.

Prompts are rendered by :func:`minichatgpt.tokenizer.format_prompt` (the tokenizer's chat template, or
the plain ``Human: ... Assistant:`` format) and responses by ``format_response``. Each piece is
tokenized on its own and the ids are concatenated, so which tokens belong to the response is known
exactly instead of guessed from the length of a separately tokenized prompt (BPE merges across the
boundary make that guess wrong by a token now and then).

Special tokens: the tokenizer's leading specials (LLaMA's ``<s>``, OPT's ``</s>``; none for GPT-2) are
put once at the start of a sequence, unless the rendered text already begins with them, as chat
templates that write ``{{ bos_token }}`` do. Every response ends with the EOS id, appended as an id so
it cannot be split or merged by the tokenizer.

Message text never yields special tokens (role injection): responses are tokenized with special-token
text as plain text, and prompts through :func:`minichatgpt.tokenizer.encode_rendered`, which keeps only
the template's own control tokens special.
"""

import warnings
from typing import List, Sequence, Tuple

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from minichatgpt.data.fields import invalid_field
from minichatgpt.data.readers import DataError
from minichatgpt.tokenizer import (Message, RenderedPrompt, encode_rendered, format_response,
                                   leading_special_ids, plain_text_ids, render_prompt, turn_end_token)


def check_max_len(max_len: int) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
    return max_len


class Encoder:
    """Token ids of prompts, responses, whole conversations and documents for one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer with an EOS token (see ``prepare_tokenizer``).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token; call prepare_tokenizer first")
        self.tokenizer = tokenizer
        self.eos_token: str = turn_end_token(tokenizer)  # the chat template's terminator, else EOS
        self.eos_token_id: int = tokenizer.convert_tokens_to_ids(self.eos_token)
        self.prefix_ids = leading_special_ids(tokenizer)
        self.prefix_text = "".join(tokenizer.convert_ids_to_tokens(self.prefix_ids))
        self._warned_unstable_template = False

    # -- text -> ids ----------------------------------------------------------------------------
    def text_ids(self, text: str, start: bool = False) -> List[int]:
        """Ids of ``text``; with ``start=True`` the leading special tokens come first (once)."""
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []
        if start and self.prefix_ids and not text.startswith(self.prefix_text):
            return self.prefix_ids + ids
        return ids

    def rendered_ids(self, rendered: RenderedPrompt, start: bool = False) -> List[int]:
        """:meth:`text_ids` of rendered prompt text whose message spans yield no special tokens."""
        ids = encode_rendered(self.tokenizer, rendered) if rendered.text else []
        if start and self.prefix_ids and not rendered.text.startswith(self.prefix_text):
            return self.prefix_ids + ids
        return ids

    def render_prompt(self, messages: Sequence[Message], where: str) -> RenderedPrompt:
        """``render_prompt`` with chat-template failures (e.g. "roles must alternate") as DataError."""
        try:
            return render_prompt(self.tokenizer, messages)
        except (TemplateError, ValueError) as err:
            raise DataError(f"{where}: the chat template rejected this conversation ({err})") from err

    def prompt_ids(self, messages: Sequence[Message], where: str) -> List[int]:
        """(T_prompt,) ids of the prompt that awaits the assistant's reply to ``messages``."""
        return self.rendered_ids(self.render_prompt(messages, where), start=True)

    def response_text(self, response: str) -> str:
        """The text that follows the prompt for an assistant reply, without the EOS token."""
        text = format_response(self.tokenizer, response, self.eos_token)
        return text[:-len(self.eos_token)] if text.endswith(self.eos_token) else text

    def response_ids(self, response: str) -> List[int]:
        """(T_response,) ids of an assistant reply as it follows its prompt, EOS id last."""
        return plain_text_ids(self.tokenizer, self.response_text(response)) + [self.eos_token_id]

    def document_ids(self, text: str) -> List[int]:
        """Ids of a pretraining document: leading specials, the text, EOS (the document boundary)."""
        return self.text_ids(text, start=True) + [self.eos_token_id]

    def conversation_ids(self, messages: Sequence[Message], field: str, where: str) -> Tuple[List[int], List[bool]]:
        """Ids of a whole conversation and which of them are assistant tokens to train on.

        Every assistant turn that follows a user turn is a response (its tokens and its EOS are
        trained on); everything else is context. The text between two responses is what the prompt
        renderer adds for the next user turn: ``format_prompt(messages[:k])`` minus everything
        rendered so far. A chat template that ends assistant turns with the EOS token writes it
        there too; it is skipped because the response already ended with the EOS id.

        Returns:
            ids (T,) and is_response (T,), True on the tokens to put a loss on.
        """
        turns = [k for k, m in enumerate(messages)
                 if m["role"] == "assistant" and any(p["role"] == "user" for p in messages[:k])]
        if not turns:
            raise invalid_field(where, field, "has no assistant turn after a user turn")
        ids: List[int] = []
        is_response: List[bool] = []
        rendered = ""  # the text equivalent of ``ids``, without the EOS ids
        for k in turns:
            prompt = self.render_prompt(messages[:k], where)
            if not prompt.text.startswith(rendered):
                # The template rewrites earlier turns (some drop past reasoning, some renumber):
                # the turns cannot share one sequence, so only the last one is trained on.
                self._warn_unstable_template(where)
                return self._single_turn(messages, turns[-1], where)
            context = prompt.tail(len(rendered))
            if ids and context.text.startswith(self.eos_token):
                context = context.tail(len(self.eos_token))
            context_ids = self.rendered_ids(context, start=not ids)
            response = self.response_ids(messages[k]["content"])
            ids += context_ids + response
            is_response += [False] * len(context_ids) + [True] * len(response)
            rendered = prompt.text + self.response_text(messages[k]["content"])
        return ids, is_response

    def _single_turn(self, messages: Sequence[Message], k: int, where: str) -> Tuple[List[int], List[bool]]:
        prompt, response = self.prompt_ids(messages[:k], where), self.response_ids(messages[k]["content"])
        return prompt + response, [False] * len(prompt) + [True] * len(response)

    def _warn_unstable_template(self, where: str) -> None:
        if not self._warned_unstable_template:
            self._warned_unstable_template = True
            warnings.warn(f"{where}: the chat template does not render earlier turns unchanged; "
                          f"multi-turn conversations are trained on their last assistant turn only", stacklevel=3)

    # -- truncation -----------------------------------------------------------------------------
    def keep_tail(self, ids: List[int], max_len: int) -> List[int]:
        """The last ``max_len`` ids of a prompt, still starting with the leading special tokens.

        The end of a prompt (the question and the assistant header) matters most for what comes
        next, so prompts lose their beginning; a BOS the model always saw first is kept in front.
        """
        if len(ids) <= max_len:
            return ids
        n = len(self.prefix_ids)
        if n and n < max_len and ids[:n] == self.prefix_ids:
            return self.prefix_ids + ids[len(ids) - (max_len - n):]
        return ids[len(ids) - max_len:]
