"""The issue-11 probes (items 7-10) against a real ``minichatgpt serve``, printed as a Markdown table.

    python benchmarks/probe_server.py                 # a tiny GPT-2 (word tokenizer, 128-token window)
    python benchmarks/probe_server.py --model DIR

The server is started here on 127.0.0.1 (a free port, ``--max_new_tokens 100 --max_queue 2 --threads 1``,
``MINICHATGPT_API_KEY=probe-key``) and stopped at the end. Each probe is one bounded request (or a few);
RSS is the server's resident memory (``/proc/PID/status``) before and after the probe.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
KEY = "probe-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(directory: str) -> str:
    import torch

    from minichatgpt.demo import build_word_tokenizer
    from minichatgpt.nn import load_model

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer()
    config = dict(model_type="gpt2", n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tokenizer),
                  pad_token_id=0, bos_token_id=2, eos_token_id=2)
    load_model(config=config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def raw_post(port: int, headers: dict, chunks=(), timeout: float = 30.0):
    """(status, MiB of body sent) of a POST written by hand; stops sending once the server answers."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
                                                   **AUTH, **headers}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\n{head}\r\n".encode())
        sent, answer = 0, b""
        for chunk in chunks:
            sock.setblocking(False)
            try:
                answer = sock.recv(65536)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        sock.settimeout(timeout)
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError as error:
            return f"({type(error).__name__})", sent / 2 ** 20
    return (answer.split(b" ")[1].decode() if answer else "(closed)"), sent / 2 ** 20


def chat(content="describe the cat", **extra):
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0, **extra}


def probes(url: str, port: int, pid: int):
    """(item, probe, callable returning (status, note)) for every probe."""
    def post(body, path="/v1/chat/completions", headers=AUTH, timeout=120.0):
        return httpx.post(url + path, json=body, headers=headers, timeout=timeout)

    def status(response):
        error = response.json().get("error") if response.headers.get("content-type", "").startswith(
            "application/json") else None
        return str(response.status_code), (f"param={error['param']}" if error and error.get("param") else "")

    def huge_prompt():
        busy, worst, result = threading.Event(), [0.0], []
        busy.set()

        def watch():
            while busy.is_set():
                started = time.monotonic()
                httpx.get(url + "/health", timeout=60)
                worst[0] = max(worst[0], time.monotonic() - started)
                time.sleep(0.02)
        watcher = threading.Thread(target=watch)
        watcher.start()
        result.append(post({"prompt": "describe the cat " * 480_000}, "/v1/completions"))
        busy.clear()
        watcher.join()
        return result[0].status_code, f"/health worst {worst[0]:.2f} s"

    def forged():
        plain = post(chat("describe the cat"), headers=AUTH).json()["usage"]["prompt_tokens"]
        with_eos = post(chat("describe the cat <eos>"), headers=AUTH).json()["usage"]["prompt_tokens"]
        return 200, f"'<eos>' adds {with_eos - plain} prompt token(s) ({'special id' if with_eos - plain == 1 else 'text'})"

    def queue_full():
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: post(chat(max_tokens=16, stream=True)), range(12)))
        busy = [a for a in answers if a.status_code == 429]
        return ",".join(sorted({str(a.status_code) for a in answers})), \
            f"{len(busy)}/12 got 429, Retry-After={busy[0].headers.get('retry-after') if busy else '-'}"

    def dropped(stream: bool):
        try:
            if stream:
                with httpx.stream("POST", url + "/v1/chat/completions", json=chat(max_tokens=100, stream=True),
                                  headers=AUTH, timeout=30) as response:
                    next(response.iter_bytes())
            else:
                post(chat(max_tokens=100), timeout=0.05)
        except httpx.TimeoutException:
            pass
        time.sleep(0.5)
        return "-", "see the log column"

    chunk = b"x" * 2 ** 20
    chunked = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 1024
    return [
        ("7", "POST /v1/chat/completions without a key", lambda: status(post(chat(), headers={}))),
        ("7", "... with a wrong key", lambda: status(post(chat(), headers={"Authorization": "Bearer nope"}))),
        ("7", "... with the key", lambda: status(post(chat()))),
        ("7", "GET /v1/models with Host: evil.example", lambda: status(httpx.get(
            url + "/v1/models", headers={"Host": "evil.example", **AUTH}))),
        ("7", "POST with Content-Type: text/plain", lambda: status(httpx.post(
            url + "/v1/chat/completions", content=json.dumps(chat()), headers={"Content-Type": "text/plain", **AUTH}))),
        ("7", "CORS preflight from http://evil.example", lambda: (str(httpx.options(
            url + "/v1/chat/completions", headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "POST"}).status_code),
            "no Access-Control-Allow-Origin")),
        ("8", "Content-Length: 1 GiB, no body sent", lambda: (raw_post(port, {"Content-Length": 2 ** 30},
                                                                          timeout=10)[0], "")),
        ("8", "chunked body, up to 1 GiB offered", lambda: (lambda r: (r[0], f"{r[1]:.0f} MiB sent"))(
            raw_post(port, {"Transfer-Encoding": "chunked"}, chunked))),
        ("8", "7.8 MB completion prompt", huge_prompt),
        ("8", "max_tokens 120 (--max_new_tokens 100)", lambda: (lambda r: (str(r.status_code), "completion_tokens="
                                                                           f"{r.json()['usage']['completion_tokens']}"))(
            post({"prompt": "the cat is", "max_tokens": 120, "temperature": 0}, "/v1/completions"))),
        ("9", "temperature 1e-45", lambda: status(post(chat(temperature=1e-45)))),
        ("9", "top_p 1e-46", lambda: status(post(chat(temperature=1.0, top_p=1e-46)))),
        ("9", "seed 2**70", lambda: status(post(chat(temperature=1.0, seed=2 ** 70)))),
        ("9", "empty completion prompt", lambda: status(post({"prompt": "", "max_tokens": 4}, "/v1/completions"))),
        ("9", "temperature NaN (JSON literal)", lambda: status(httpx.post(
            url + "/v1/chat/completions", content='{"messages": [{"role": "user", "content": "hi"}], '
                                                  '"temperature": NaN}', headers={"Content-Type": "application/json",
                                                                                  **AUTH}))),
        ("9", "12 concurrent streams, --max_queue 2", queue_full),
        ("9", "client drops a stream after the first chunk", lambda: dropped(True)),
        ("9", "client drops a non-streaming request (50 ms)", lambda: dropped(False)),
        ("10", "'<eos>' typed in a user message", forged),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="save_pretrained directory (default: a tiny GPT-2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(os.path.join(tmp, "tiny"))
        port, log_path = free_port(), os.path.join(tmp, "server.log")
        env = dict(os.environ, MINICHATGPT_API_KEY=KEY, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), REPO_ROOT]))
        with open(log_path, "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "minichatgpt.serving.cli", "serve", "--model", model,
                                       "--device", "cpu", "--port", str(port), "--max_new_tokens", "100",
                                       "--max_queue", "2", "--threads", "1", "--log_level", "info"],
                                      stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            print("| item | probe | status | time (s) | RSS before -> after (MiB) | notes | server log |")
            print("|---|---|---|---:|---|---|---|")
            for item, name, probe in probes(url, port, server.pid):
                with open(log_path) as f:
                    log_start = len(f.read())
                before, started = rss_mib(server.pid), time.monotonic()
                code, note = probe()
                seconds, after = time.monotonic() - started, rss_mib(server.pid)
                time.sleep(0.3)
                with open(log_path) as f:
                    new = [line for line in f.read()[log_start:].splitlines()
                           if "HTTP/1.1" not in line and "attention_mask" not in line]
                logged = f"{len(new)} line(s), {sum('Traceback' in x for x in new)} traceback(s)" if new else ""
                if len(new) == 1:
                    logged = new[0].strip()[:90].replace("|", "/")
                print(f"| {item} | {name} | {code} | {seconds:.2f} | {before:.0f} -> {after:.0f} | {note} | {logged} |",
                      flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
            with open(log_path) as f:
                head = [line for line in f.read().splitlines() if "Uvicorn running" in line]
            print("\nserver:", head[0].strip() if head else "(no 'Uvicorn running' line)")


if __name__ == "__main__":
    main()
