"""Continuous batching in the server: concurrent requests share one running batch (forward row counts
show it) and each gets exactly the reply it gets alone, with its own max_tokens, seed and stop strings;
a client that leaves mid-batch is dropped without disturbing the others; the queue limit still answers
429. The model is the tiny chat model, slowed down so that requests overlap, its stop tokens banned so
that replies run to their max_tokens."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")

from minichatgpt.serving.engine import GenerationOptions, encode_text, generate_text, stop_token_ids  # noqa: E402
from minichatgpt.serving.server import create_app  # noqa: E402

from conftest import scramble_weights  # noqa: E402

from .conftest import patch_forward, serve_in_thread  # noqa: E402

PROMPTS = ["the cat is", "tell me about the dog", "the village is lovely and the valley is", "soup"]


@pytest.fixture
def slow_model(loaded_chat_model, monkeypatch):
    """The tiny model with larger random weights (so that replies vary from word to word), 10 ms per
    forward, never ending a reply early; and a list of each decode forward's row count."""
    model, tokenizer = loaded_chat_model
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    scramble_weights(model)
    patch_forward(monkeypatch, model, delay_s=0.01, token=None, banned=sorted(stop_token_ids(model, tokenizer)))
    rows = []
    def count(module, args, kwargs):  # decode forwards are those given a cache (a prefill can be one token)
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            rows.append(kwargs["input_ids"].size(0))

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    yield model, tokenizer, rows
    hook.remove()
    model.load_state_dict(saved)


def alone(model, tokenizer, prompt, max_tokens, **options):
    return generate_text(model, tokenizer, encode_text(tokenizer, prompt),
                         GenerationOptions(max_new_tokens=max_tokens, **{"temperature": 0.0, **options}))[0]


def stream(url, prompt, max_tokens, leave_after=None, delay_s=0.0, **extra):
    """The streamed text of a completion; with ``leave_after`` the client hangs up after that many chunks."""
    time.sleep(delay_s)
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, **extra}
    parts = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                parts.append(json.loads(line[6:])["choices"][0]["text"])
                if leave_after is not None and len(parts) >= leave_after:
                    return None
    return "".join(parts)


def test_concurrent_streams_share_one_batch_and_get_their_replies_alone(slow_model):
    model, tokenizer, rows = slow_model
    budgets = [20, 12, 16, 24]
    expected = [alone(model, tokenizer, p, n) for p, n in zip(PROMPTS, budgets)]
    rows.clear()
    with serve_in_thread(create_app(model, tokenizer, "tiny", GenerationOptions(max_new_tokens=64))) as url:
        with ThreadPoolExecutor(4) as pool:  # requests join while others are running
            got = list(pool.map(lambda i: stream(url, PROMPTS[i], budgets[i], delay_s=0.03 * i), range(4)))
    assert got == expected and len(set(" ".join(got).split())) >= 6  # replies that tell words apart
    assert max(rows) >= 3  # decode steps ran several requests in one forward
    assert sum(rows) == sum(budgets) - len(budgets)  # every token but each last one fed once: no wasted rows


def test_a_client_leaving_mid_batch_is_dropped_and_the_others_complete(slow_model):
    model, tokenizer, rows = slow_model
    expected = [alone(model, tokenizer, p, 24) for p in PROMPTS[:2]]
    rows.clear()
    with serve_in_thread(create_app(model, tokenizer, "tiny", GenerationOptions(max_new_tokens=64))) as url:
        with ThreadPoolExecutor(3) as pool:
            leaver = pool.submit(stream, url, PROMPTS[2], 60, leave_after=2)
            others = [pool.submit(stream, url, p, 24, delay_s=0.02) for p in PROMPTS[:2]]
            assert [f.result() for f in others] == expected and leaver.result() is None
        health = httpx.get(url + "/health").json()
        assert health["queued"] == 0 and health["running"] == 0  # the leaver's row is gone too
    assert sum(rows) < 60 + 2 * 23  # the leaver's 59 decode rows were not all computed


def test_per_request_seed_max_tokens_and_stop_strings_hold_in_a_batch(slow_model):
    model, tokenizer, _ = slow_model
    seeded = alone(model, tokenizer, PROMPTS[0], 16, temperature=1.0, seed=7)
    free = alone(model, tokenizer, PROMPTS[1], 16)
    stop = " " + free.split()[2]
    url_body = {"prompt": PROMPTS[1], "max_tokens": 16, "temperature": 0, "stop": [stop]}
    with serve_in_thread(create_app(model, tokenizer, "tiny", GenerationOptions(max_new_tokens=64))) as url:
        with ThreadPoolExecutor(3) as pool:
            sampled = pool.submit(stream, url, PROMPTS[0], 16, temperature=1.0, seed=7)
            cut = pool.submit(lambda: httpx.post(url + "/v1/completions", json=url_body, timeout=60).json())
            short = pool.submit(lambda: httpx.post(url + "/v1/completions", timeout=60, json={
                "prompt": PROMPTS[3], "max_tokens": 5, "temperature": 0}).json())
            assert sampled.result() == seeded
            assert cut.result()["choices"][0]["text"] == free[:free.find(stop)]
            assert cut.result()["choices"][0]["finish_reason"] == "stop"
            assert short.result()["usage"]["completion_tokens"] == 5
            assert short.result()["choices"][0]["finish_reason"] == "length"


def test_a_full_queue_behind_a_full_batch_answers_429_and_the_others_finish(slow_model):
    model, tokenizer, _ = slow_model
    app = create_app(model, tokenizer, "tiny", GenerationOptions(max_new_tokens=64), max_queue=1, max_batch=1)
    with serve_in_thread(app) as url:
        running = threading.Event()

        def first():
            with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
                    "prompt": PROMPTS[0], "max_tokens": 40, "stream": True, "temperature": 0}) as response:
                lines = response.iter_lines()
                next(line for line in lines if line.startswith("data: "))
                running.set()
                return sum(1 for _ in lines) > 0

        with ThreadPoolExecutor(2) as pool:
            one = pool.submit(first)
            assert running.wait(30)
            queued = pool.submit(httpx.post, url + "/v1/completions", timeout=60,
                                 json={"prompt": PROMPTS[1], "max_tokens": 4, "temperature": 0})
            deadline = time.monotonic() + 10
            while httpx.get(url + "/health").json()["queued"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = httpx.post(url + "/v1/completions", json={"prompt": PROMPTS[2], "max_tokens": 4}, timeout=60)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert one.result() and queued.result().status_code == 200
