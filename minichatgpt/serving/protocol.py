"""The API's request schemas and its error object: what a client may send, checked before any work.

Every client error is an :class:`APIError`, sent as a 4xx with an OpenAI-style body
``{"error": {"message", "type", "param", "code"}}``; ``param`` names the offending field.
"""

import re
from typing import Dict, List, Literal, Optional, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP_STRINGS = 4
SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts


class APIError(Exception):
    """An error to send to the client as ``{"error": {...}}`` with an HTTP status (and headers)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error", headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    """A 400 naming the field: ``"{param}: {message}"``."""
    return APIError(400, f"{param}: {message}", param=param, code=code)


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


class Sampling(_Strict):
    """Fields shared by both endpoints. ``temperature`` and ``top_p`` are finite; ``seed`` fits torch's."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    logprobs: Union[bool, int, None] = None


class ChatCompletionRequest(Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(Sampling):
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


def parse_body(body: bytes, schema: type) -> BaseModel:
    """Validate a JSON body against ``schema``; any problem is a 400 naming the field."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        raise _validation_error(error) from None


def message_text(message: ChatMessage) -> Dict[str, str]:
    """A request message as the ``{"role", "content"}`` dict the prompt renderer takes."""
    content = message.content if isinstance(message.content, str) else "".join(p.text for p in message.content)
    return {"role": "system" if message.role == "developer" else message.role, "content": content}


def stop_strings(body: Sampling) -> List[str]:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise invalid("stop", f"at most {MAX_STOP_STRINGS} stop strings")
    return stop
