"""OpenAI response objects built from the worker's text deltas: whole replies and server-sent events."""

import json
import logging
import time
import uuid
from typing import AsyncIterator, Optional, Union

from .protocol import APIError
from .worker import Job

log = logging.getLogger("minichatgpt.serving")


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: Union[dict, str]) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class Reply:
    """Shapes deltas into one endpoint's OpenAI objects (chat or text completion)."""

    def __init__(self, chat: bool, model_name: str, prompt_tokens: int):
        self.chat, self.model_name, self.prompt_tokens = chat, model_name, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.started = not chat  # chat replies drop the plain format's leading space

    def clean(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return text

    def _envelope(self, kind: str, choices: list) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_name,
                "choices": choices}

    def chunk(self, text: Optional[str], finish_reason: Optional[str], first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, completion_tokens: int) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._envelope(kind, []), "usage": usage(self.prompt_tokens, completion_tokens)}

    def whole(self, text: str, finish_reason: str, completion_tokens: int) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            body = self._envelope("chat.completion", [choice])
        else:
            body = self._envelope("text_completion", [{"index": 0, "text": text, "logprobs": None,
                                                       "finish_reason": finish_reason}])
        return {**body, "usage": usage(self.prompt_tokens, completion_tokens)}


def generation_failed(error: BaseException) -> APIError:
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error")


async def events(job: Job, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """A streamed reply as server-sent events, always ending with ``[DONE]`` (after an error event if
    generation failed); the job is cancelled when the stream ends for any reason."""
    done = False
    try:
        if reply.chat:
            yield sse(reply.chunk(None, None, first=True))
        async for delta in job.stream():
            text = reply.clean(delta.text)
            if text:
                yield sse(reply.chunk(text, None))
            if delta.finish_reason is not None:
                done = True
                yield sse(reply.chunk(None, delta.finish_reason))
                if include_usage:
                    yield sse(reply.usage_chunk(delta.completion_tokens))
    except Exception as error:
        log.warning("stream %s failed: %s: %s", reply.id, type(error).__name__, error)
        yield sse(generation_failed(error).body())
    finally:
        if not done and not job.finished.is_set():
            log.info("stream %s ended before its reply (client gone?); generation stopped", reply.id)
        job.cancelled.set()  # the client left, or the reply is done: stop generating either way
    yield sse("[DONE]")
