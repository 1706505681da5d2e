"""An OpenAI-compatible HTTP server for one model (FastAPI + uvicorn), with a web chat page at ``/``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (server-sent events when ``stream``
is true), ``GET /v1/models``, ``GET /health``, ``GET /``.

Layers, outside in: the guard (``guard.py``: Host, API key, Content-Type, body size, CORS), request
validation (``protocol.py``: schemas, prompt size, sampling fields), prompt encoding on a helper thread
(never on the event loop), then the generation worker (``worker.py``: one thread owns the model and
runs a continuous batch that queued requests join, in arrival order, and leave at token boundaries; a
full queue answers 429 with Retry-After).
A client that goes away, streaming or not, ends its generation at the next token.

Every client error is a 4xx with an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import List, Optional

import torch.nn as nn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedTokenizerBase

from .engine import GenerationOptions, context_window, encode_chat, encode_text
from .guard import GuardConfig, install_guard
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, Sampling, invalid, message_text,
                       parse_body, stop_strings)
from .replies import Reply, events, generation_failed
from .worker import DEFAULT_MAX_BATCH, GenerationWorker, Job

CHARS_PER_TOKEN_LIMIT = 16  # default prompt-character cap: this many characters per context-window token
DISCONNECT_POLL_S = 0.1
log = logging.getLogger("minichatgpt.serving")


class Service:
    """The API's work between the guard and the worker: validate, encode (off the event loop), queue, reply."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str,
                 defaults: GenerationOptions, max_queue: int, window: int, max_prompt_chars: int,
                 max_batch: int = DEFAULT_MAX_BATCH):
        self.tokenizer, self.model_name, self.defaults, self.window = tokenizer, model_name, defaults, window
        self.max_prompt_chars = max_prompt_chars
        self.worker = GenerationWorker(model, tokenizer, max_queue, max_batch)
        self.encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minichatgpt-encode")

    async def encode(self, param: str, text_chars: int, encode, *args) -> List[int]:
        """Prompt ids from ``encode(tokenizer, *args)`` on the encoding thread, after the character cap."""
        if text_chars > self.max_prompt_chars:
            raise APIError(400, f"{param}: the prompt is {text_chars} characters; this server takes at most "
                                f"{self.max_prompt_chars}", param=param, code="context_length_exceeded")
        try:
            ids = await asyncio.get_running_loop().run_in_executor(self.encoder, encode, self.tokenizer, *args)
        except TemplateError as error:
            raise invalid(param, f"the chat template rejected them: {error}") from None
        except (ValueError, UnicodeError) as error:  # special text a template cannot isolate; lone surrogates
            raise invalid(param, str(error)) from None
        if not ids:
            raise invalid(param, "must not be empty")
        return ids

    def options_for(self, body: Sampling, param: str, prompt_tokens: int,
                    max_tokens: Optional[int]) -> GenerationOptions:
        """Decoding options; ``max_tokens`` beyond the window is a 400, beyond ``max_new_tokens`` is lowered."""
        if body.logprobs not in (None, False):
            raise invalid("logprobs", "logprobs are not supported by this server")
        if prompt_tokens >= self.window:
            raise APIError(400, f"{param}: this model's maximum context length is {self.window} tokens, and the "
                                f"prompt is {prompt_tokens} tokens; shorten it", param=param,
                           code="context_length_exceeded")
        if max_tokens is not None and prompt_tokens + max_tokens > self.window:
            raise APIError(400, f"max_tokens: this model's maximum context length is {self.window} tokens; the "
                                f"request asks for {prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, "
                                f"{max_tokens} for the completion); lower max_tokens", param="max_tokens",
                           code="context_length_exceeded")
        stop = stop_strings(body)
        return GenerationOptions(
            max_new_tokens=min(max_tokens or self.defaults.max_new_tokens, self.defaults.max_new_tokens,
                               self.window - prompt_tokens),
            temperature=self.defaults.temperature if body.temperature is None else body.temperature,
            top_p=self.defaults.top_p if body.top_p is None else body.top_p,
            stop=tuple(stop), seed=body.seed)

    async def chat(self, request: Request):
        body = parse_body(await request.body(), ChatCompletionRequest)
        messages = [message_text(m) for m in body.messages]
        ids = await self.encode("messages", sum(len(m["content"]) for m in messages), encode_chat, messages)
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await self.respond(request, body, ids, self.options_for(body, "messages", len(ids), max_tokens),
                                  chat=True)

    async def complete(self, request: Request):
        body = parse_body(await request.body(), CompletionRequest)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise invalid("prompt", "exactly one prompt per request is supported")
        if body.echo:
            raise APIError(400, "echo is not supported by this server", param="echo", code="invalid_value")
        ids = await self.encode("prompt", len(prompts[0]), encode_text, prompts[0])
        return await self.respond(request, body, ids, self.options_for(body, "prompt", len(ids), body.max_tokens),
                                  chat=False)

    async def respond(self, request: Request, body: Sampling, prompt_ids: List[int], options: GenerationOptions,
                      chat: bool):
        job = Job(prompt_ids, options, asyncio.get_running_loop())
        self.worker.submit(job)
        reply = Reply(chat, self.model_name, len(prompt_ids))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(events(job, reply, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, job, reply.id))
        try:
            parts, last = [], None
            async for last in job.stream():
                parts.append(reply.clean(last.text))
        except Exception as error:
            raise generation_failed(error) from None
        finally:
            job.cancelled.set()
            watcher.cancel()
        return reply.whole("".join(parts), last.finish_reason, last.completion_tokens)

    async def health(self) -> dict:
        return {"status": "ok", "model": self.model_name, "queued": self.worker.pending(),
                "running": len(self.worker.running), "worker_alive": self.worker.thread.is_alive()}

    def close(self) -> None:
        self.worker.stop()
        self.encoder.shutdown(wait=False, cancel_futures=True)


async def _cancel_on_disconnect(request: Request, job: Job, reply_id: str) -> None:
    """Cancel ``job`` when the client of a non-streaming request hangs up (as a dropped stream is)."""
    while not job.finished.is_set():
        if await request.is_disconnected():
            job.cancelled.set()
            log.info("client of %s disconnected before its reply; generation stopped", reply_id)
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def _add_error_handlers(app: FastAPI) -> None:
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
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal server error: {type(error).__name__}", kind="server_error").response()


def create_app(model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str,
               default_options: Optional[GenerationOptions] = None, max_queue: int = 64,
               max_context_tokens: Optional[int] = None, guard: Optional[GuardConfig] = None,
               max_prompt_chars: Optional[int] = None, max_batch: int = DEFAULT_MAX_BATCH) -> FastAPI:
    """Build the app around a loaded model.

    Args:
        model_name: the id reported by ``/v1/models`` and in every response. The ``model`` field of
            requests is not checked (clients often send a fixed name); this server has one model.
        default_options: decoding defaults for fields a request leaves out; its ``max_new_tokens`` is
            also the hard cap on ``max_tokens`` (larger requests are lowered to it).
        max_queue: requests allowed to wait for the worker before new ones get 429.
        max_context_tokens: context window override (default: the model's).
        guard: Host names, API key, CORS origins and body limit (default: loopback names, no key, no CORS).
        max_prompt_chars: longest prompt (characters) that is tokenized at all (default: 16 per window token).
        max_batch: requests decoded together in the running batch; more wait in the queue.
    """
    window = max_context_tokens or context_window(model, tokenizer)
    service = Service(model, tokenizer, model_name, default_options or GenerationOptions(), max_queue, window,
                      max_prompt_chars or CHARS_PER_TOKEN_LIMIT * window, max_batch)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="minichatgpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.worker = service, service.worker
    _add_error_handlers(app)
    install_guard(app, guard or GuardConfig())
    app.add_api_route("/v1/chat/completions", service.chat, methods=["POST"])
    app.add_api_route("/v1/completions", service.complete, methods=["POST"])
    card = {"id": model_name, "object": "model", "created": started, "owned_by": "minichatgpt",
            "context_window": window}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != model_name:
            raise APIError(404, f"the model {model_id!r} does not exist; this server has {model_name!r}",
                           param="model", code="model_not_found", kind="not_found_error")
        return card

    app.add_api_route("/health", service.health, methods=["GET"])
    page = resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted (loopback only unless ``host`` says otherwise)."""
    import uvicorn

    logger = logging.getLogger("minichatgpt.serving")  # one line per event, in uvicorn's format
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(log_level.upper())
    uvicorn.run(app, host=host, port=port, log_level=log_level)
