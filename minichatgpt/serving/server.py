"""An OpenAI-compatible HTTP server for one model (FastAPI + uvicorn), with a web chat page at ``/``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (server-sent events when ``stream``
is true), ``GET /v1/models``, ``GET /health``, ``GET /``.

Concurrency: one generation worker thread owns the model and serves requests one at a time, first in,
first out, from a bounded queue (no batching). Request handlers run on the event loop: they validate,
tokenize and enqueue, then await the worker's text deltas. The model is therefore never run from two
threads, and a slow reader cannot stall other requests longer than its own generation. A full queue
answers 429; a client that goes away ends its generation at the next token.

Every client error is a 4xx with an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``.
"""

import asyncio
import copy
import json
import queue
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import AsyncIterator, List, Literal, Optional, Union

import torch.nn as nn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedTokenizerBase

from .engine import GenerationOptions, TextDelta, context_window, encode_chat, encode_text, stream_text

MAX_BODY_BYTES = 8 * 2 ** 20
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """An error to send to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ---- request schemas (strict: "1" is not a number, 1 is not a boolean; unknown fields are ignored) ----

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[TextPart]]


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = None
    logprobs: Union[bool, int, None] = None


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str]]
    echo: bool = False


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|function-.*)$")


def _validation_error(error: ValidationError) -> APIError:
    # In a union the deepest error names the branch the client meant (a list of parts, not a string).
    first = max(error.errors(), key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first['msg']}", code="invalid_json")
    param = ".".join(str(part) for part in first["loc"] if not _TYPE_TAG.match(str(part))) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = "field required"
    if param == "n":
        message = "only n=1 is supported"
    return APIError(400, f"{param}: {message}" if param else message, param=param,
                    code="missing_required_parameter" if first["type"] == "missing" else "invalid_value")


async def _parse(request: Request, schema: type) -> BaseModel:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        raise _validation_error(error) from None


# ---- the generation worker ----

class Job:
    """One request waiting for, or being served by, the worker; deltas cross to the event loop."""

    def __init__(self, prompt_ids: List[int], options: GenerationOptions, loop: asyncio.AbstractEventLoop):
        self.prompt_ids, self.options, self.loop = prompt_ids, options, loop
        self.deltas: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def put(self, item: Union[TextDelta, BaseException]) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.deltas.put_nowait, item)

    async def stream(self) -> AsyncIterator[TextDelta]:
        """The reply's deltas, ending with the one that has a finish reason."""
        while True:
            item = await self.deltas.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return


class GenerationWorker:
    """The single thread that runs the model, serving queued jobs in arrival order."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_queue: int):
        self.model = model
        # A private tokenizer: Rust-backed fast tokenizers must not be used from two threads at once,
        # and the event loop keeps encoding prompts while this thread decodes.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.thread = threading.Thread(target=self._run, name="minichatgpt-generation", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise APIError(429, "the server is busy: too many requests are waiting; retry later",
                           code="queue_full", kind="server_busy") from None

    def pending(self) -> int:
        return self.jobs.qsize()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            try:
                for delta in stream_text(self.model, self.tokenizer, job.prompt_ids, job.options,
                                         cancelled=job.cancelled.is_set):
                    job.put(delta)
            except Exception as error:  # reported to this request only; the worker keeps serving
                job.put(error)


# ---- responses ----

def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: Union[dict, str]) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class _Reply:
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
        return {**self._envelope(kind, []), "usage": _usage(self.prompt_tokens, completion_tokens)}

    def whole(self, text: str, finish_reason: str, completion_tokens: int) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            body = self._envelope("chat.completion", [choice])
        else:
            body = self._envelope("text_completion", [{"index": 0, "text": text, "logprobs": None,
                                                       "finish_reason": finish_reason}])
        return {**body, "usage": _usage(self.prompt_tokens, completion_tokens)}


def _message_text(message: ChatMessage) -> dict:
    content = message.content if isinstance(message.content, str) else "".join(p.text for p in message.content)
    return {"role": "system" if message.role == "developer" else message.role, "content": content}


def create_app(model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str,
               default_options: Optional[GenerationOptions] = None, max_queue: int = 64,
               max_context_tokens: Optional[int] = None) -> FastAPI:
    """Build the app around a loaded model.

    Args:
        model_name: the id reported by ``/v1/models`` and in every response. The ``model`` field of
            requests is not checked (clients often send a fixed name); this server has one model.
        default_options: decoding defaults for fields a request leaves out (``max_new_tokens`` is the
            default ``max_tokens``, clipped to what the context window leaves).
        max_queue: requests allowed to wait for the worker before new ones get 429.
        max_context_tokens: context window override (default: the model's).
    """
    defaults = default_options or GenerationOptions()
    window = max_context_tokens or context_window(model, tokenizer)
    worker = GenerationWorker(model, tokenizer, max_queue)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.stop()

    app = FastAPI(title="minichatgpt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker = worker

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}",
                        kind=kind).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        return APIError(500, f"internal server error: {type(error).__name__}", kind="server_error").response()

    def options_for(body: _Sampling, prompt_tokens: int, max_tokens: Optional[int]) -> GenerationOptions:
        if body.logprobs not in (None, False):
            raise APIError(400, "logprobs are not supported by this server", param="logprobs",
                           code="invalid_value")
        if prompt_tokens >= window:
            raise APIError(400, f"this model's maximum context length is {window} tokens, and the prompt "
                                f"is {prompt_tokens} tokens; shorten it", param="messages" if isinstance(
                                    body, ChatCompletionRequest) else "prompt", code="context_length_exceeded")
        if max_tokens is not None and prompt_tokens + max_tokens > window:
            raise APIError(400, f"this model's maximum context length is {window} tokens; the request asks "
                                f"for {prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} "
                                f"for the completion); lower max_tokens", param="max_tokens",
                           code="context_length_exceeded")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings", param="stop",
                           code="invalid_value")
        return GenerationOptions(
            max_new_tokens=max_tokens or min(defaults.max_new_tokens, window - prompt_tokens),
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            stop=tuple(stop), seed=body.seed)

    async def respond(body: _Sampling, prompt_ids: List[int], options: GenerationOptions, chat: bool):
        job = Job(prompt_ids, options, asyncio.get_running_loop())
        worker.submit(job)
        reply = _Reply(chat, model_name, len(prompt_ids))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_events(job, reply, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            parts, last = [], None
            async for last in job.stream():
                parts.append(reply.clean(last.text))
        except Exception as error:
            raise APIError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error")
        finally:
            job.cancelled.set()
        return reply.whole("".join(parts), last.finish_reason, last.completion_tokens)

    async def _events(job: Job, reply: _Reply, include_usage: bool) -> AsyncIterator[str]:
        try:
            if reply.chat:
                yield _sse(reply.chunk(None, None, first=True))
            async for delta in job.stream():
                text = reply.clean(delta.text)
                if text:
                    yield _sse(reply.chunk(text, None))
                if delta.finish_reason is not None:
                    yield _sse(reply.chunk(None, delta.finish_reason))
                    if include_usage:
                        yield _sse(reply.usage_chunk(delta.completion_tokens))
            yield _sse("[DONE]")
        except Exception as error:
            yield _sse(APIError(500, f"generation failed: {type(error).__name__}: {error}",
                                kind="server_error").body())
        finally:
            job.cancelled.set()  # the client left, or the reply is done: stop generating either way

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatCompletionRequest)
        try:
            prompt_ids = encode_chat(tokenizer, [_message_text(m) for m in body.messages])
        except TemplateError as error:
            raise APIError(400, f"messages: the chat template rejected them: {error}", param="messages",
                           code="invalid_value") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await respond(body, prompt_ids, options_for(body, len(prompt_ids), max_tokens), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "prompt: exactly one prompt per request is supported", param="prompt",
                           code="invalid_value")
        if body.echo:
            raise APIError(400, "echo is not supported by this server", param="echo", code="invalid_value")
        prompt_ids = encode_text(tokenizer, prompts[0])
        return await respond(body, prompt_ids, options_for(body, len(prompt_ids), body.max_tokens), chat=False)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": started, "owned_by": "minichatgpt",
                "context_window": window}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != model_name:
            raise APIError(404, f"the model {model_id!r} does not exist; this server has {model_name!r}",
                           param="model", code="model_not_found", kind="not_found_error")
        return model_card()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "queued": worker.pending(),
                "worker_alive": worker.thread.is_alive()}

    page = resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted (loopback only unless ``host`` says otherwise)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
