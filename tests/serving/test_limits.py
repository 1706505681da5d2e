"""Item 8 of issue 11: limits are enforced before the work. A body is refused on its declared length
(before it is read) or as soon as a chunked body goes over; prompts are capped in characters and encoded
off the event loop (``/health`` stays responsive); ``--max_new_tokens`` caps ``max_tokens``; a
non-streaming request whose client left stops generating."""

import socket
import threading
import time
from urllib.parse import urlparse

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from minichatgpt.serving.engine import GenerationOptions  # noqa: E402

from .conftest import patch_forward, serve_in_thread  # noqa: E402

LIMIT = 8 * 2 ** 20


def raw_request(url, head, body_chunks=(), timeout=10):
    """Send ``head`` (request line + headers) and then ``body_chunks`` while the server lets us; return
    (status line, bytes of body sent)."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        sent = 0
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            if answer:
                break
            try:
                sock.setblocking(True)
                sock.sendall(chunk)
                sent += len(chunk)
                sock.setblocking(False)
            except OSError:  # the server answered and closed
                break
        sock.setblocking(True)
        sock.settimeout(timeout)
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer.split(b"\r\n")[0].decode(), sent


def head(url, path, **headers):
    lines = [f"POST {path} HTTP/1.1", f"Host: {urlparse(url).netloc}", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


def test_a_huge_content_length_is_refused_before_the_body_is_read(server_url):
    started = time.monotonic()
    status, _ = raw_request(server_url, head(server_url, "/v1/completions", Content_Length=2 ** 30), timeout=10)
    assert status.split()[1] == "413" and time.monotonic() - started < 5


def test_a_chunked_body_is_refused_as_soon_as_it_goes_over(server_url):
    piece = b'{"prompt": "' + b"x" * (2 ** 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, sent = raw_request(server_url, head(server_url, "/v1/completions", Transfer_Encoding="chunked"),
                               [chunk] * 64, timeout=30)
    assert status.split()[1] == "413"
    assert sent < 3 * LIMIT  # not the 64 MiB offered: refused after a little over the limit (socket buffers)


def health_latencies(url, busy: threading.Event):
    latencies = []
    while busy.is_set() or not latencies:
        started = time.monotonic()
        httpx.get(url + "/health", timeout=60)
        latencies.append(time.monotonic() - started)
        time.sleep(0.02)
    return latencies


def post_in_background(url, path, body, busy, result):
    def run():
        try:
            result.append(httpx.post(url + path, json=body, timeout=120))
        finally:
            busy.clear()
    busy.set()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_huge_prompt_is_refused_by_its_length_and_health_stays_responsive(server_url):
    busy, result = threading.Event(), []
    thread = post_in_background(server_url, "/v1/completions", {"prompt": "describe the cat " * 460_000}, busy, result)
    latencies = health_latencies(server_url, busy)
    thread.join()
    assert result[0].status_code == 400 and result[0].json()["error"]["param"] == "prompt"
    assert max(latencies) < 1.0, latencies


def test_prompts_are_encoded_off_the_event_loop(loaded_chat_model):
    from minichatgpt.serving.server import create_app

    model, tokenizer = loaded_chat_model
    app = create_app(model, tokenizer, "tiny", GenerationOptions(max_new_tokens=2), max_prompt_chars=10 ** 8)
    with serve_in_thread(app) as url:
        busy, result = threading.Event(), []
        thread = post_in_background(url, "/v1/completions", {"prompt": "describe the cat " * 60_000}, busy, result)
        time.sleep(0.05)
        latencies = health_latencies(url, busy)
        thread.join()
    assert result[0].status_code == 400  # over the 128-token window, found out by tokenizing (about a second)
    assert max(latencies) < 0.5, latencies


def test_max_new_tokens_caps_max_tokens(server_url):
    # The server runs with --max_new_tokens 12; 60 fits the window but is lowered to 12.
    response = httpx.post(server_url + "/v1/completions", json={"prompt": "the cat is", "max_tokens": 60,
                                                                 "temperature": 0}, timeout=60)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] <= 12


def test_a_non_streaming_request_whose_client_left_stops_generating(loaded_chat_model, monkeypatch):
    from minichatgpt.serving.server import create_app

    record = []
    model, tokenizer = loaded_chat_model
    patch_forward(monkeypatch, model, delay_s=0.02, record=record)
    app = create_app(model, tokenizer, "tiny", GenerationOptions(max_new_tokens=120, temperature=0))
    with serve_in_thread(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json={"prompt": "the cat is", "max_tokens": 120}, timeout=0.4)
        left = time.monotonic()
        time.sleep(1.0)
        assert httpx.get(url + "/health").json()["queued"] == 0
    after = [t for t in record if t > left + 0.5]
    assert len(record) < 100 and not after  # 120 tokens take 2.4 s; it stopped soon after the client left
