"""Item 7 of issue 11: API key, Host names (DNS rebinding), JSON-only bodies, CORS off by default,
loopback by default. The default server (no key, loopback names) is the real ``minichatgpt serve``
process; servers with a key or CORS origins are built in-process."""

import argparse

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from minichatgpt.serving import cli  # noqa: E402
from minichatgpt.serving.engine import GenerationOptions  # noqa: E402

from .conftest import serve_in_thread  # noqa: E402

KEY = "s3cret-key"
CHAT = {"messages": [{"role": "user", "content": "describe the cat"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def keyed_url(loaded_chat_model):
    from minichatgpt.serving.guard import GuardConfig
    from minichatgpt.serving.server import create_app

    model, tokenizer = loaded_chat_model
    app = create_app(model, tokenizer, "tiny-gpt2", GenerationOptions(max_new_tokens=4, temperature=0),
                     guard=GuardConfig(api_key=KEY, cors_origins=("http://app.example",)))
    with serve_in_thread(app) as url:
        yield url


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}])
def test_every_v1_route_needs_the_key(keyed_url, headers):
    for method, path, body in [("GET", "/v1/models", None), ("GET", "/v1/models/tiny-gpt2", None),
                               ("POST", "/v1/chat/completions", CHAT), ("POST", "/v1/completions", {"prompt": "a"}),
                               ("GET", "/v1/nothing", None)]:
        response = httpx.request(method, keyed_url + path, json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_key_opens_the_api_and_the_page_and_health_stay_open(keyed_url):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(keyed_url + "/v1/models", headers=auth).status_code == 200
    reply = httpx.post(keyed_url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=60)
    assert reply.status_code == 200 and reply.json()["object"] == "chat.completion"
    assert httpx.get(keyed_url + "/health").status_code == 200
    assert httpx.get(keyed_url + "/").status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil",
                                  "10.0.0.1", ""])
def test_foreign_host_names_are_refused_on_every_route(server_url, host):
    for path in ("/health", "/", "/v1/models"):
        response = httpx.get(server_url + path, headers={"Host": host})
        assert response.status_code == 421, (host, path, response.status_code)


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:1234", "[::1]:80",
                                  "LOCALHOST", "localhost."])
def test_loopback_host_names_are_accepted(server_url, host):
    assert httpx.get(server_url + "/v1/models", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_a_body_that_is_not_declared_json_gets_415(server_url, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(server_url + "/v1/chat/completions", content=b'{"messages": [{"role": "user", '
                          b'"content": "hi"}]}', headers=headers)
    assert response.status_code == 415, response.text
    assert httpx.post(server_url + "/v1/chat/completions", json=CHAT,
                      headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_cors_is_off_by_default(server_url):
    preflight = httpx.options(server_url + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = httpx.get(server_url + "/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_origins_are_allowed_when_given(keyed_url):
    preflight = httpx.options(keyed_url + "/v1/chat/completions", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(keyed_url + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.headers.get("access-control-allow-origin") != "http://evil.example"


def parse_serve(*argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", "--model", "m", *argv])


def test_command_line_guard_defaults_to_loopback_and_no_key(monkeypatch):
    monkeypatch.delenv("MINICHATGPT_API_KEY", raising=False)
    args = parse_serve()
    assert args.host == "127.0.0.1"
    guard = cli.guard_config(args)
    assert guard.api_key is None and guard.cors_origins == ()
    assert set(guard.allowed_hosts) == {"localhost", "127.0.0.1", "[::1]"}


def test_command_line_guard_reads_the_key_hosts_and_origins(monkeypatch):
    monkeypatch.setenv("MINICHATGPT_API_KEY", "from-env")
    assert cli.guard_config(parse_serve()).api_key == "from-env"
    guard = cli.guard_config(parse_serve("--api_key", "flag", "--host", "10.1.2.3", "--allowed_hosts",
                                         "box.lan, box", "--cors_origins", "http://a.example,http://b.example"))
    assert guard.api_key == "flag"
    assert {"10.1.2.3", "box.lan", "box", "localhost"} <= set(guard.allowed_hosts)
    assert guard.cors_origins == ("http://a.example", "http://b.example")
