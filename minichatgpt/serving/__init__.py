"""Inference and serving: terminal chat, an OpenAI-compatible HTTP server with a web page, quantization.

``minichatgpt.serving.server`` needs the ``serve`` extra (fastapi, uvicorn) and is imported on its own;
this package's top level needs only the core dependencies.
"""

from .chat import ChatSession, run_chat
from .engine import GenerationOptions, TextDelta, context_window, generate_text, stream_text
from .loading import load_for_inference
from .quant import model_memory_bytes, quantize_model

__all__ = [
           "ChatSession",
           "GenerationOptions",
           "TextDelta",
           "context_window",
           "generate_text",
           "load_for_inference",
           "model_memory_bytes",
           "quantize_model",
           "run_chat",
           "stream_text",
]
