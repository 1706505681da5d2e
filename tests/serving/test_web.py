"""The web chat page in a real browser: Debian's headless Chromium driven by Playwright.

Skipped, with the reason, when Chromium or the ``playwright`` package is not installed (CI installs
them: apt ``chromium``, pip ``playwright``; Playwright's own browser download is never used).
"""

import os
import shutil
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="no Chromium browser (apt-get install chromium) for the web page test")


@pytest.fixture(scope="module")
def page(server_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1000, "height": 700})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server_url + "/")
        yield page
        context.close()


def _send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_page_streams_a_reply_and_keeps_the_conversation(page, server_url, tmp_path):
    import httpx

    page.wait_for_selector("#model.ok")
    assert "tiny-gpt2" in page.inner_text("#model")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "6")

    _send(page, "describe the cat")
    first = page.wait_for_selector(".message.assistant[data-state=done]")
    _send(page, "what is the dog like")
    page.wait_for_selector(".message.assistant[data-state=done] >> nth=1")
    replies = [el.inner_text() for el in page.query_selector_all(".message.assistant")]
    assert [el.inner_text() for el in page.query_selector_all(".message.user")] == \
        ["describe the cat", "what is the dog like"]

    # The page sent the whole conversation: the API gives the same second reply for it.
    body = {"messages": [{"role": "user", "content": "describe the cat"},
                         {"role": "assistant", "content": replies[0]},
                         {"role": "user", "content": "what is the dog like"}], "temperature": 0, "max_tokens": 6}
    api = httpx.post(server_url + "/v1/chat/completions", json=body, timeout=60).json()
    assert replies == [first.inner_text(), api["choices"][0]["message"]["content"]]
    assert replies[0]
    page.screenshot(path=str(tmp_path / "chat.png"))


def test_page_shows_server_errors(page):
    page.wait_for_selector("#model.ok")
    page.fill("#temperature", "9")
    _send(page, "describe the fox")
    error = page.wait_for_selector(".error")
    assert "400" in error.inner_text() and "temperature" in error.inner_text()
    page.fill("#temperature", "0")
    page.click("#reset")
    assert page.query_selector_all(".message") == []


def test_page_asks_for_the_api_key_once_and_then_chats(page, loaded_chat_model):
    from minichatgpt.serving.engine import GenerationOptions
    from minichatgpt.serving.guard import GuardConfig
    from minichatgpt.serving.server import create_app

    from .conftest import serve_in_thread

    model, tokenizer = loaded_chat_model
    app = create_app(model, tokenizer, "tiny-gpt2", GenerationOptions(max_new_tokens=6, temperature=0),
                     guard=GuardConfig(api_key="page-key"))
    with serve_in_thread(app) as url:
        keyed = page.context.new_page()  # a new tab: its own session storage, no key yet
        keyed.set_default_timeout(60_000)
        keyed.goto(url + "/")
        keyed.wait_for_selector("#key-row.open")
        assert "API key needed" in keyed.inner_text("#model")
        keyed.fill("#api-key", "not-the-key")
        keyed.click("#use-key")
        keyed.wait_for_function("document.querySelector('#model').textContent.includes('wrong API key')")
        keyed.fill("#api-key", "page-key")
        keyed.click("#use-key")
        keyed.wait_for_selector("#model.ok")
        assert not keyed.is_visible("#key-row")
        for n, question in enumerate(["describe the cat", "what is the dog like"]):  # asked once, then reused
            _send(keyed, question)
            keyed.wait_for_selector(f".message.assistant[data-state=done] >> nth={n}")
        assert keyed.query_selector_all(".error") == []
        keyed.close()
