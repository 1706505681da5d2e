"""Multi-turn chat in a terminal: history kept and trimmed to the context window, replies streamed.

``ChatSession`` holds one conversation and generates replies; ``run_chat`` is the read-print loop around
it, with ``input_fn`` and ``output`` as arguments so a test can script a conversation.
"""

import sys
from typing import Callable, Iterator, List, Optional, TextIO

import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from ..tokenizer import Message
from .engine import GenerationOptions, PromptTooLongError, context_window, fit_messages, stream_text

COMMANDS = {"/reset": "forget the conversation", "/exit": "leave; /quit and Ctrl-D too"}


class ChatSession:
    """One conversation with a model.

    Args:
        options: decoding controls for every reply.
        system_prompt: an optional system message kept at the top of every prompt.
        max_context_tokens: context window override (default: the model's).
    """

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
                 options: Optional[GenerationOptions] = None, system_prompt: Optional[str] = None,
                 max_context_tokens: Optional[int] = None):
        self.model, self.tokenizer = model, tokenizer
        self.options = options or GenerationOptions()
        self.system_prompt = system_prompt
        self.window = max_context_tokens or context_window(model, tokenizer)
        self.history: List[Message] = []
        self.last_prompt_messages: List[Message] = []  # what the model saw for the latest reply

    def reset(self) -> None:
        self.history = []

    def _reply_budget(self) -> int:
        # Keep room for a full reply, but never more than half the window, so a small model with a
        # short window can still see some history.
        return min(self.options.max_new_tokens, self.window // 2)

    def send(self, text: str) -> Iterator[str]:
        """Add a user turn and stream the reply's text; the reply joins the history when done.

        Raises:
            PromptTooLongError: the message alone does not fit the context window (it is not kept).
        """
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages = system + self.history + [{"role": "user", "content": text}]
        kept, prompt_ids = fit_messages(self.tokenizer, messages, self.window - self._reply_budget())
        self.last_prompt_messages = kept
        self.history.append({"role": "user", "content": text})
        parts = []
        try:
            for delta in stream_text(self.model, self.tokenizer, prompt_ids, self.options):
                text = delta.text if parts else delta.text.lstrip()  # the plain format's leading space
                if text:
                    parts.append(text)
                    yield text
        finally:
            self.history.append({"role": "assistant", "content": "".join(parts).strip()})


def run_chat(model: nn.Module, tokenizer: PreTrainedTokenizerBase, input_fn: Callable[[str], str] = input,
             output: Optional[TextIO] = None, options: Optional[GenerationOptions] = None,
             system_prompt: Optional[str] = None, max_context_tokens: Optional[int] = None) -> ChatSession:
    """Chat until ``/exit`` or end of input; returns the session (its history) for inspection.

    Args:
        input_fn: reads one user line given a prompt string (``input`` by default).
        output: where the conversation is printed (default ``sys.stdout`` at call time); replies are
            written token by token and flushed.
    """
    output = output or sys.stdout
    session = ChatSession(model, tokenizer, options, system_prompt, max_context_tokens)
    commands = ", ".join(f"{name} ({help})" for name, help in COMMANDS.items())
    output.write(f"Chatting with the model; commands: {commands}.\n")
    while True:
        try:
            text = input_fn("You: ").strip()
        except (EOFError, KeyboardInterrupt):
            output.write("\n")
            break
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            output.write("(conversation reset)\n")
            continue
        if not text:
            continue
        output.write("Assistant: ")
        output.flush()
        try:
            for piece in session.send(text):
                output.write(piece)
                output.flush()
        except PromptTooLongError as error:
            output.write(f"(message not sent: {error})")
        except KeyboardInterrupt:
            output.write(" (interrupted)")
        output.write("\n")
        output.flush()
    return session
