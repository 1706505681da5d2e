"""Generate one reply from a trained model (optionally with a LoRA adapter and 8/4-bit weights).

    python examples/inference.py --model out/actor --prompt "Describe the cat"
    python examples/inference.py --model out/sft --lora out/lora --quant 4bit --prompt "Hi" --max_new_tokens 64

The prompt is one user turn, rendered with the model's chat template (or the plain Human/Assistant
format) exactly as ``minichatgpt chat`` and ``minichatgpt serve`` do; the reply streams to stdout.
"""

import argparse
import sys

from minichatgpt.serving import GenerationOptions, load_for_inference, model_memory_bytes, stream_text
from minichatgpt.serving.engine import encode_chat
from minichatgpt.serving.quant import QUANT_MODES, format_bytes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="save_pretrained directory, hub name or .gguf file")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", default=None, help="optional system prompt")
    parser.add_argument("--lora", default=None, help="peft LoRA adapter directory")
    parser.add_argument("--quant", choices=QUANT_MODES, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    model, tokenizer = load_for_inference(args.model, lora=args.lora, quant=args.quant, device=args.device,
                                          dtype=args.dtype)
    print(f"model memory: {format_bytes(model_memory_bytes(model))}", file=sys.stderr)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": args.prompt}]
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, seed=args.seed)
    for delta in stream_text(model, tokenizer, encode_chat(tokenizer, messages), options):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"[{delta.completion_tokens} tokens, finish_reason={delta.finish_reason}]", file=sys.stderr)


if __name__ == "__main__":
    main()
