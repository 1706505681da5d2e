"""Fixtures for the serving tests: a tiny chat model directory and a real server process serving it.

The server is a subprocess started through the real command line (``python -m minichatgpt.serving.cli
serve``) on 127.0.0.1 and a free port, shared by the HTTP and browser tests of one session.
"""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import minichatgpt

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(minichatgpt.__file__)))
SERVER_START_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dirs):
    """A tiny GPT-2 (word tokenizer, plain Human/Assistant format, 128-token window) on disk."""
    return tiny_model_dirs["gpt2"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log_path: str) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"server exited with {process.returncode}:\n{f.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server at {url} not healthy after {SERVER_START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def server_url(chat_model_dir, tmp_path_factory):
    """Base URL of a running ``minichatgpt serve`` for the tiny model (greedy by default)."""
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
    pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
    pytest.importorskip("httpx", reason="httpx is needed to talk to the server")
    log_path = str(tmp_path_factory.mktemp("server") / "server.log")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for attempt in range(3):  # the port could be taken between choosing and binding it
        port = free_port()
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "minichatgpt.serving.cli", "serve", "--model", chat_model_dir,
                 "--device", "cpu", "--port", str(port), "--temperature", "0", "--max_new_tokens", "12",
                 "--model_name", "tiny-gpt2", "--log_level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, process, log_path)
            break
        except RuntimeError:
            process.kill()
            process.wait()
            if attempt == 2:
                raise
    yield url
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve_in_thread(app):
    """Run ``app`` with uvicorn on 127.0.0.1 in a thread of this process; yields its base URL.

    For tests that build the app in-process (custom guard settings, a patched decode loop).
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def loaded_chat_model(chat_model_dir):
    """The tiny chat model and its tokenizer, loaded once in this process."""
    from minichatgpt.nn import load_model, load_tokenizer

    return load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)


def patch_forward(monkeypatch, model, delay_s: float = 0.0, token=5, record=None, fail_on_call=None, banned=()):
    """Make ``model`` a slow model that always says ``token`` (a word, never a stop token): each forward
    sleeps ``delay_s``, appends its time to ``record`` and, on call number ``fail_on_call`` (1 is the
    prefill), raises. The real forward still runs, so the KV cache is real. With ``token=None`` the
    model's own logits are kept, except that the ``banned`` ids are never chosen."""
    import functools

    import torch

    original, calls = model.forward, []

    @functools.wraps(original)
    def forward(*args, **kwargs):
        calls.append(1)
        if fail_on_call is not None and len(calls) >= fail_on_call:
            raise RuntimeError("the accelerator fell over")
        time.sleep(delay_s)
        if record is not None:
            record.append(time.monotonic())
        out = original(*args, **kwargs)
        logits = torch.full_like(out.logits, -1e4) if token is not None else out.logits.clone()
        if token is not None:
            logits[..., token] = 0.0
        logits[..., list(banned)] = -1e4
        out.logits = logits
        return out

    monkeypatch.setattr(model, "forward", forward)
