"""``minichatgpt chat`` and ``minichatgpt serve``: talk to a trained model in a terminal or over HTTP.

``register(subparsers)`` adds both subcommands to the package's command line; this module also runs
on its own: ``python -m minichatgpt.serving.cli chat --model DIR``.
"""

import dataclasses
import os
import sys
from typing import List, Optional

from ..config import NON_NEGATIVE, PORT, POSITIVE_INT, TOP_P, ConfigParser, UsageError, add_arguments, option, validate
from ..extras import MissingDependency, require
from .quant import QUANT_MODES


SERVER_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclasses.dataclass
class ChatConfig:
    """``minichatgpt chat``: multi-turn chat in the terminal; /reset forgets the conversation, /exit leaves."""
    model: Optional[str] = option(None, "save_pretrained directory (or hub name, or .gguf file) of the model "
                                        "(required)")
    lora: Optional[str] = option(None, "peft LoRA adapter directory, merged into the model")
    quant: Optional[str] = option(None, "weight quantization: bitsandbytes on CUDA, torchao on CPU",
                                  choices=QUANT_MODES)
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    dtype: str = option("auto", "compute dtype (auto: bfloat16/float16 on CUDA, float32 on CPU)",
                        choices=("auto", "float32", "bfloat16", "float16"))
    temperature: float = option(0.7, "sampling temperature; 0 for greedy decoding", rule=NON_NEGATIVE)
    top_p: float = option(1.0, "nucleus sampling mass", rule=TOP_P)
    max_new_tokens: int = option(256, "most tokens per reply (serve: also the cap on a request's max_tokens; larger "
                                      "requests are lowered to it)", rule=POSITIVE_INT)
    max_context: Optional[int] = option(None, "context window override (default: the model's)", rule=POSITIVE_INT)
    threads: Optional[int] = option(None, "CPU threads for torch (default: torch's choice); 1 is much faster when "
                                          "other processes share the cores", rule=POSITIVE_INT)
    system: Optional[str] = option(None, "system prompt (chat)")

    def check(self) -> None:
        if not self.model:
            raise UsageError("--model is required: the save_pretrained directory, hub name or .gguf file to load")


@dataclasses.dataclass
class ServeConfig(ChatConfig):
    """``minichatgpt serve``: OpenAI-compatible /v1/chat/completions and /v1/completions, plus a web chat page at /."""
    host: str = option("127.0.0.1", "address to bind (default: loopback only)")
    port: int = option(8000, "port to listen on", rule=PORT)
    model_name: Optional[str] = option(None, "id reported by /v1/models (default: directory name)")
    max_queue: int = option(64, "waiting requests before 429", rule=POSITIVE_INT)
    max_batch: int = option(8, "requests decoded together (continuous batching); more wait in the queue",
                            rule=POSITIVE_INT)
    api_key: Optional[str] = option(None, "Bearer token required on every /v1 route (default: $MINICHATGPT_API_KEY; "
                                          "none: open). The environment variable keeps the key out of the process "
                                          "list")
    allowed_hosts: Optional[str] = option(None, "comma-separated Host names accepted besides localhost, 127.0.0.1, "
                                                "[::1] and --host (* accepts any; other Host headers get 421, "
                                                "against DNS rebinding)")
    cors_origins: Optional[str] = option(None, "comma-separated origins allowed to call the API from a browser "
                                               "(default: CORS off)")
    max_prompt_chars: Optional[int] = option(None, "longest prompt in characters, refused before tokenizing "
                                                   "(default: 16 per context token)", rule=POSITIVE_INT)
    log_level: str = option("info", "the server's log level", choices=SERVER_LOG_LEVELS)


CONFIGS = {"chat": ChatConfig, "serve": ServeConfig}


def _options(args):
    from .engine import GenerationOptions

    return GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def as_config(command: str, args):
    """A checked config from a config or from a plain namespace (``register``'s parsers)."""
    if not dataclasses.is_dataclass(args):
        fields = {f.name for f in dataclasses.fields(CONFIGS[command])}
        args = CONFIGS[command](**{k: v for k, v in vars(args).items() if k in fields})
    validate(args)
    return args


def _load(args: ChatConfig):
    import torch

    from .loading import load_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"loading {args.model}" + (f" + LoRA {args.lora}" if args.lora else "")
          + (f" ({args.quant})" if args.quant else "") + " ...", file=sys.stderr, flush=True)
    return load_for_inference(args.model, lora=args.lora, quant=args.quant, device=args.device, dtype=args.dtype)


def run_chat_command(args) -> None:
    from .chat import run_chat

    args = as_config("chat", args)
    options = _options(args)
    model, tokenizer = _load(args)
    run_chat(model, tokenizer, options=options, system_prompt=args.system, max_context_tokens=args.max_context)


def _names(value: Optional[str]) -> tuple:
    return tuple(name.strip() for name in (value or "").split(",") if name.strip())


def guard_config(args):
    """The server's guard from the command line: API key (or ``$MINICHATGPT_API_KEY``), Host names, CORS.

    The bound address is an allowed Host name too, unless it is a wildcard (0.0.0.0, ::).
    """
    from .guard import API_KEY_ENV, LOOPBACK_HOSTS, GuardConfig

    bound = () if args.host in ("0.0.0.0", "::", "") else (f"[{args.host}]" if ":" in args.host else args.host,)
    return GuardConfig(api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                       allowed_hosts=tuple(dict.fromkeys(LOOPBACK_HOSTS + bound + _names(args.allowed_hosts))),
                       cors_origins=_names(args.cors_origins))


def run_serve_command(args) -> None:
    args = as_config("serve", args)
    require(("fastapi", "uvicorn"), "serve", "the HTTP server")
    from .server import create_app, serve

    options = _options(args)
    guard = guard_config(args)
    model, tokenizer = _load(args)
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    app = create_app(model, tokenizer, name, default_options=options, max_queue=args.max_queue,
                     max_context_tokens=args.max_context, guard=guard, max_prompt_chars=args.max_prompt_chars,
                     max_batch=args.max_batch)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not guard.api_key:
        print(f"warning: listening on {args.host}, reachable from other machines, without an API key "
              f"(--api_key or $MINICHATGPT_API_KEY)", file=sys.stderr)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)


COMMANDS = {"chat": ("chat with a model in the terminal", run_chat_command),
            "serve": ("serve a model over an OpenAI-compatible HTTP API", run_serve_command)}


def register(subparsers) -> None:
    """Add the ``chat`` and ``serve`` subcommands (every field of their configs, with defaults) to an
    ``argparse`` subparsers object."""
    for name, (summary, func) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=CONFIGS[name].__doc__)
        add_arguments(sub, CONFIGS[name], keep_defaults=True)
        sub.set_defaults(func=func)


def run(command: str, argv: Optional[List[str]] = None) -> None:
    """``minichatgpt chat|serve`` with ``--config FILE.yaml`` under the flags, as the training commands."""
    config = ConfigParser(CONFIGS[command], prog=f"minichatgpt {command}",
                          description=CONFIGS[command].__doc__).parse_args(argv)
    COMMANDS[command][1](config)


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m minichatgpt.serving.cli chat|serve ...``: a bad flag or missing extra is one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m minichatgpt.serving.cli {{{','.join(COMMANDS)}}} [options]")
    try:
        run(argv[0], argv[1:])
    except (UsageError, MissingDependency) as err:
        raise SystemExit(f"minichatgpt {argv[0]}: error: {err}") from None


if __name__ == "__main__":
    main()
