"""The OpenAI-compatible server, as a real uvicorn process on 127.0.0.1: response formats (through the
``openai`` client when installed), streaming, concurrent requests, and a 4xx for every bad request."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")

from minichatgpt.nn import load_model, load_tokenizer
from minichatgpt.serving.engine import GenerationOptions, encode_chat, encode_text, generate_text

QUESTIONS = ["describe the cat", "what is the dog like", "tell me about the apple", "describe the river",
             "how would you describe the hammer", "what is the soup like", "describe the fox",
             "tell me about the village"]


def chat_body(question, **extra):
    return {"model": "tiny-gpt2", "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": 8, **extra}


def post(url, path, body):
    return httpx.post(url + path, json=body, timeout=60)


def sse_events(response_text):
    """The ``data:`` payloads of a server-sent-events body, in order."""
    return [block[len("data: "):] for block in response_text.split("\n\n") if block.startswith("data: ")]


@pytest.fixture(scope="module")
def local(chat_model_dir):
    """The served model loaded in this process, to compute expected answers."""
    return load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)


def expected_chat(local, question, max_tokens=8):
    model, tokenizer = local
    ids = encode_chat(tokenizer, [{"role": "user", "content": question}])
    text, finish, count = generate_text(model, tokenizer, ids, GenerationOptions(max_new_tokens=max_tokens,
                                                                                  temperature=0.0))
    return text.lstrip(), finish, len(ids), count


def test_health_and_models(server_url):
    health = httpx.get(server_url + "/health").json()
    assert health["status"] == "ok" and health["worker_alive"]
    models = httpx.get(server_url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny-gpt2"]
    assert models["data"][0]["context_window"] == 128
    assert httpx.get(server_url + "/v1/models/tiny-gpt2").json()["id"] == "tiny-gpt2"


def test_chat_completion_through_the_openai_client(server_url, local):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0)
    response = client.chat.completions.create(**chat_body("describe the cat"))
    text, finish, prompt_tokens, count = expected_chat(local, "describe the cat")
    assert response.object == "chat.completion" and response.model == "tiny-gpt2"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == text
    assert response.choices[0].finish_reason == finish
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (prompt_tokens, count)
    assert response.usage.total_tokens == prompt_tokens + count

    stream = client.chat.completions.create(**chat_body("describe the cat"), stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count


def test_completion_through_the_openai_client(server_url, local):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0)
    model, tokenizer = local
    prompt = "the cat is"
    expected, finish, _ = generate_text(model, tokenizer, encode_text(tokenizer, prompt),
                                        GenerationOptions(max_new_tokens=6, temperature=0.0))
    response = client.completions.create(model="tiny-gpt2", prompt=prompt, max_tokens=6, temperature=0)
    assert response.object == "text_completion"
    assert (response.choices[0].text, response.choices[0].finish_reason) == (expected, finish)
    chunks = list(client.completions.create(model="tiny-gpt2", prompt=prompt, max_tokens=6, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected


def test_raw_stream_is_server_sent_events_ending_with_done(server_url, local):
    with httpx.stream("POST", server_url + "/v1/chat/completions", timeout=60,
                      json=chat_body("describe the dog", stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        expected_chat(local, "describe the dog")[0]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_concurrent_requests_get_their_own_answers(server_url, local):
    def ask(i):
        question = QUESTIONS[i]
        if i % 2:  # half of the clients stream, half wait for the whole answer
            with httpx.stream("POST", server_url + "/v1/chat/completions", timeout=120,
                              json=chat_body(question, stream=True)) as response:
                events = sse_events(response.read().decode())[:-1]
            return "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events)
        return post(server_url, "/v1/chat/completions", chat_body(question)).json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [expected_chat(local, q)[0] for q in QUESTIONS]


def test_client_leaving_mid_stream_does_not_hurt_the_server(server_url, local):
    with httpx.stream("POST", server_url + "/v1/chat/completions", timeout=60,
                      json=chat_body("describe the cat", stream=True, max_tokens=60)) as response:
        next(response.iter_bytes())  # read the first chunk, then hang up
    answer = post(server_url, "/v1/chat/completions", chat_body("describe the fox")).json()
    assert answer["choices"][0]["message"]["content"] == expected_chat(local, "describe the fox")[0]


LONG = " ".join(["cat"] * 200)
BAD_REQUESTS = [
    # (id, path, body (dict, or raw bytes), status, param)
    ("malformed-json", "/v1/chat/completions", b'{"messages": [', 400, None),
    ("not-an-object", "/v1/chat/completions", b"[1, 2]", 400, None),
    ("empty-body", "/v1/chat/completions", b"", 400, None),
    ("missing-messages", "/v1/chat/completions", {"model": "tiny-gpt2"}, 400, "messages"),
    ("empty-messages", "/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("messages-not-list", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("bad-role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.0.role"),
    ("content-number", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages.0.content"),
    ("image-part", "/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages.0.content.0.type"),
    ("temperature-string", "/v1/chat/completions", chat_body("hi", temperature="hot"), 400, "temperature"),
    ("temperature-too-high", "/v1/chat/completions", chat_body("hi", temperature=5), 400, "temperature"),
    ("temperature-negative", "/v1/chat/completions", chat_body("hi", temperature=-0.5), 400, "temperature"),
    ("top-p-zero", "/v1/chat/completions", chat_body("hi", top_p=0), 400, "top_p"),
    ("max-tokens-negative", "/v1/chat/completions", chat_body("hi", max_tokens=-1), 400, "max_tokens"),
    ("max-tokens-zero", "/v1/chat/completions", chat_body("hi", max_tokens=0), 400, "max_tokens"),
    ("max-tokens-float", "/v1/chat/completions", chat_body("hi", max_tokens=1.5), 400, "max_tokens"),
    ("max-tokens-absurd", "/v1/chat/completions", chat_body("hi", max_tokens=10 ** 30), 400, "max_tokens"),
    ("max-tokens-over-window", "/v1/chat/completions", chat_body("hi", max_tokens=125), 400, "max_tokens"),
    ("prompt-over-window", "/v1/chat/completions", chat_body(LONG), 400, "messages"),
    ("stream-not-bool", "/v1/chat/completions", chat_body("hi", stream="yes"), 400, "stream"),
    ("n-two", "/v1/chat/completions", chat_body("hi", n=2), 400, "n"),
    ("too-many-stops", "/v1/chat/completions", chat_body("hi", stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("logprobs", "/v1/chat/completions", chat_body("hi", logprobs=True), 400, "logprobs"),
    ("seed-string", "/v1/chat/completions", chat_body("hi", seed="1"), 400, "seed"),
    ("completion-missing-prompt", "/v1/completions", {"max_tokens": 3}, 400, "prompt"),
    ("completion-prompt-number", "/v1/completions", {"prompt": 42}, 400, "prompt"),
    ("completion-two-prompts", "/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("completion-too-long", "/v1/completions", {"prompt": LONG}, 400, "prompt"),
    ("completion-echo", "/v1/completions", {"prompt": "the cat", "echo": True}, 400, "echo"),
    ("body-too-large", "/v1/completions", b'{"prompt": "' + b"cat " * (3 * 2 ** 20) + b'"}', 413, None),
]


@pytest.mark.parametrize("path, body, status, param", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_an_openai_error_and_the_server_keeps_serving(server_url, path, body, status, param):
    if isinstance(body, bytes):
        response = httpx.post(server_url + path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = post(server_url, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert post(server_url, "/v1/chat/completions", chat_body("describe the cat", max_tokens=2)).status_code == 200


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing", 404), ("DELETE", "/v1/models", 405),
                                                  ("GET", "/v1/chat/completions", 405),
                                                  ("GET", "/v1/models/gpt-4", 404)])
def test_unknown_routes_and_methods_get_openai_errors(server_url, method, path, status):
    response = httpx.request(method, server_url + path)
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_web_page_is_served(server_url):
    response = httpx.get(server_url + "/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in response.text
