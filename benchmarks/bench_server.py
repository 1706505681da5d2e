"""Latency and throughput of ``minichatgpt serve`` under 1, 4 and 8 concurrent streaming clients.

    python benchmarks/bench_server.py                          # SmolLM2-135M (converted once, see bench_quantization)
    python benchmarks/bench_server.py --model out/actor --clients 1,4,8 --requests 16
    python benchmarks/bench_server.py --url http://127.0.0.1:8000  # an already running server

Each client sends streaming chat requests back to back (greedy, ``--max_tokens`` tokens, with
``stream_options.include_usage``); a request's latency runs from sending to ``[DONE]``, its time to
first token to the first content chunk. Throughput is completion tokens over the wall time of a level,
and its ratio to the one-client level (when measured). The server decodes concurrent requests in one
continuous batch (``--max_batch``), so tokens/s grows with the number of clients up to what the
cores give.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
TOPICS = ["the ocean", "a lighthouse", "mountains", "a small robot", "the moon", "autumn", "a city at night",
          "an old library", "the desert", "a train journey", "rain", "a garden"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, quant, threads, port: int, max_batch=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "minichatgpt.serving.cli", "serve", "--model", model_dir, "--port", str(port),
               "--temperature", "0", "--log_level", "warning", "--model_name", "bench"]
    command += (["--quant", quant] if quant else []) + (["--threads", str(threads)] if threads else [])
    command += ["--max_batch", str(max_batch)] if max_batch else []
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("server did not start")


def one_request(url: str, i: int, max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": f"Write a few sentences about {TOPICS[i % len(TOPICS)]}."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    key = os.environ.get("MINICHATGPT_API_KEY")  # the server reads it too
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    return {"latency": time.perf_counter() - start, "ttft": first or float("nan"), "tokens": tokens}


def run_level(url: str, clients: int, requests: int, max_tokens: int):
    """(per-request results, wall seconds) of ``requests`` requests from ``clients`` concurrent clients."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda i: one_request(url, i, max_tokens), range(requests)))
    return results, time.perf_counter() - start


def summarize(clients: int, results, wall: float) -> dict:
    latencies = sorted(r["latency"] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": wall,
            "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "ttft_mean_s": statistics.mean(r["ttft"] for r in results),
            "tokens_per_s": sum(r["tokens"] for r in results) / wall, "requests_per_s": len(results) / wall}


def bench(url: str, levels, requests: int, max_tokens: int, rounds: int):
    """Levels run in turn, ``rounds`` times, so that load from other processes falls on all of them."""
    results = {c: [] for c in levels}
    walls = {c: 0.0 for c in levels}
    for _ in range(rounds):
        for clients in levels:
            level_results, wall = run_level(url, clients, requests, max_tokens)
            results[clients] += level_results
            walls[clients] += wall
    return [summarize(c, results[c], walls[c]) for c in levels]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: the cached SmolLM2 copy)")
    parser.add_argument("--url", default=None, help="benchmark a running server instead of starting one")
    parser.add_argument("--quant", default=None, choices=("8bit", "4bit"))
    parser.add_argument("--clients", default="1,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=16, help="requests per level")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="times each level runs, in turn")
    parser.add_argument("--threads", type=int, default=None, help="the server's CPU threads")
    parser.add_argument("--max_batch", type=int, default=None, help="the server's --max_batch (default: its own)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    process = None
    url = args.url
    if url is None:
        model_dir = args.model
        if model_dir is None:
            sys.path.insert(0, HERE)
            from bench_quantization import DEFAULT_CACHE, DEFAULT_GGUF, converted_copy

            model_dir = converted_copy(DEFAULT_GGUF, DEFAULT_CACHE)
        port = free_port()
        process = start_server(model_dir, args.quant, args.threads, port, args.max_batch)
        url = f"http://127.0.0.1:{port}"
    try:
        one_request(url, 0, 4)  # warm-up
        levels = [int(c) for c in args.clients.split(",")]
        load_before = os.getloadavg()[0]
        rows = bench(url, levels, args.requests, args.max_tokens, args.rounds)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    print(f"{args.requests} streaming chat requests per level and round, {args.rounds} rounds, {args.max_tokens} "
          f"greedy tokens each" + (f", --quant {args.quant}" if args.quant else "")
          + (f", --threads {args.threads}" if args.threads else "")
          + f"; 1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    single = next((r["tokens_per_s"] for r in rows if r["clients"] == 1), None)
    print("| clients | latency p50 (s) | latency p95 (s) | time to first token, mean (s) | tokens/s | vs 1 client "
          "| requests/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / single:.2f}x" if single else "-"
        print(f"| {r['clients']} | {r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | {r['ttft_mean_s']:.2f} | "
              f"{r['tokens_per_s']:.1f} | {ratio} | {r['requests_per_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
