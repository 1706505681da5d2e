"""``minichatgpt chat`` and ``minichatgpt serve``: talk to a trained model in a terminal or over HTTP.

``register(subparsers)`` adds both subcommands to the package's command line; this module also runs
on its own: ``python -m minichatgpt.serving.cli chat --model DIR``.
"""

import argparse
import os
import sys
from typing import List, Optional

from ..extras import require
from .quant import QUANT_MODES


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="save_pretrained directory (or hub name, or .gguf file) of the model")
    parser.add_argument("--lora", default=None, help="peft LoRA adapter directory, merged into the model")
    parser.add_argument("--quant", choices=QUANT_MODES, default=None,
                        help="weight quantization: bitsandbytes on CUDA, torchao on CPU")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="compute dtype (auto: bfloat16/float16 on CUDA, float32 on CPU)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--max_new_tokens", type=int, default=256,
                        help="most tokens per reply (serve: also the cap on a request's max_tokens; larger "
                             "requests are lowered to it)")
    parser.add_argument("--max_context", type=int, default=None,
                        help="context window override (default: the model's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice); 1 is much faster when other "
                             "processes share the cores")


def _options(args: argparse.Namespace):
    from .engine import GenerationOptions

    if args.temperature < 0:
        raise SystemExit("--temperature must be >= 0")
    if not 0 < args.top_p <= 1:
        raise SystemExit("--top_p must be in (0, 1]")
    if args.max_new_tokens < 1:
        raise SystemExit("--max_new_tokens must be >= 1")
    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def _load(args: argparse.Namespace):
    import torch

    from .loading import load_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"loading {args.model}" + (f" + LoRA {args.lora}" if args.lora else "")
          + (f" ({args.quant})" if args.quant else "") + " ...", file=sys.stderr, flush=True)
    return load_for_inference(args.model, lora=args.lora, quant=args.quant, device=args.device, dtype=args.dtype)


def run_chat_command(args: argparse.Namespace) -> None:
    from .chat import run_chat

    options = _options(args)
    model, tokenizer = _load(args)
    run_chat(model, tokenizer, options=options, system_prompt=args.system, max_context_tokens=args.max_context)


def _names(value: Optional[str]) -> tuple:
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


def guard_config(args: argparse.Namespace):
    """The server's guard from the command line: API key (or ``$MINICHATGPT_API_KEY``), Host names, CORS.

    The bound address is an allowed Host name too, unless it is a wildcard (0.0.0.0, ::).
    """
    from .guard import API_KEY_ENV, LOOPBACK_HOSTS, GuardConfig

    bound = () if args.host in ("0.0.0.0", "::", "") else (f"[{args.host}]" if ":" in args.host else args.host,)
    return GuardConfig(api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                       allowed_hosts=tuple(dict.fromkeys(LOOPBACK_HOSTS + bound + _names(args.allowed_hosts))),
                       cors_origins=_names(args.cors_origins))


def run_serve_command(args: argparse.Namespace) -> None:
    require(("fastapi", "uvicorn"), "serve", "the HTTP server")
    from .server import create_app, serve

    options = _options(args)
    guard = guard_config(args)
    model, tokenizer = _load(args)
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    app = create_app(model, tokenizer, name, default_options=options, max_queue=args.max_queue,
                     max_context_tokens=args.max_context, guard=guard, max_prompt_chars=args.max_prompt_chars)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not guard.api_key:
        print(f"warning: listening on {args.host}, reachable from other machines, without an API key "
              f"(--api_key or $MINICHATGPT_API_KEY)", file=sys.stderr)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)


def register(subparsers) -> None:
    """Add the ``chat`` and ``serve`` subcommands to an ``argparse`` subparsers object."""
    chat = subparsers.add_parser("chat", help="chat with a model in the terminal",
                                 description="Multi-turn chat; /reset forgets the conversation, /exit leaves.")
    _add_model_arguments(chat)
    chat.add_argument("--system", default=None, help="system prompt")
    chat.set_defaults(func=run_chat_command)

    serve = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                                  description="OpenAI-compatible /v1/chat/completions and /v1/completions, "
                                              "plus a web chat page at /.")
    _add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model_name", default=None, help="id reported by /v1/models (default: directory name)")
    serve.add_argument("--max_queue", type=int, default=64, help="waiting requests before 429")
    serve.add_argument("--api_key", default=None,
                       help="Bearer token required on every /v1 route (default: $MINICHATGPT_API_KEY; none: open). "
                            "The environment variable keeps the key out of the process list")
    serve.add_argument("--allowed_hosts", default=None,
                       help="comma-separated Host names accepted besides localhost, 127.0.0.1, [::1] and --host "
                            "(* accepts any; other Host headers get 421, against DNS rebinding)")
    serve.add_argument("--cors_origins", default=None,
                       help="comma-separated origins allowed to call the API from a browser (default: CORS off)")
    serve.add_argument("--max_prompt_chars", type=int, default=None,
                       help="longest prompt in characters, refused before tokenizing (default: 16 per context token)")
    serve.add_argument("--log_level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(func=run_serve_command)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minichatgpt.serving.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
