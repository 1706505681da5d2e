"""The terminal chat loop, scripted: history, /reset, /exit, trimming to the context window."""

import io

import pytest

from minichatgpt.nn import load_model, load_tokenizer
from minichatgpt.serving.chat import ChatSession, run_chat
from minichatgpt.serving.engine import GenerationOptions, encode_chat, generate_text

GREEDY = GenerationOptions(max_new_tokens=6, temperature=0.0)


@pytest.fixture(scope="module")
def model_and_tokenizer(chat_model_dir):
    return load_model(chat_model_dir).eval(), load_tokenizer(chat_model_dir)


def scripted(lines):
    """An ``input`` replacement that answers with ``lines`` and records the prompts it was shown."""
    answers = iter(lines)

    def input_fn(prompt):
        input_fn.prompts.append(prompt)
        return next(answers)  # StopIteration past the end would be a test bug; EOF is tested apart

    input_fn.prompts = []
    return input_fn


def test_multi_turn_keeps_history_and_reset_forgets_it(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out = io.StringIO()
    script = scripted(["describe the cat", "what is the dog like", "/reset", "tell me about the apple", "/exit"])
    session = run_chat(model, tokenizer, input_fn=script, output=out, options=GREEDY)

    assert script.prompts == ["You: "] * 5
    assert [m["role"] for m in session.history] == ["user", "assistant"]  # only the turn after /reset
    assert session.history[0]["content"] == "tell me about the apple"
    assert session.last_prompt_messages == [{"role": "user", "content": "tell me about the apple"}]
    text = out.getvalue()
    assert text.count("Assistant: ") == 3 and "(conversation reset)" in text

    # The second reply was generated from the first turn plus the question: replay it by hand.
    first_reply = generate_text(model, tokenizer, encode_chat(tokenizer, [
        {"role": "user", "content": "describe the cat"}]), GREEDY)[0].strip()
    second_prompt = encode_chat(tokenizer, [
        {"role": "user", "content": "describe the cat"}, {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "what is the dog like"}])
    second_reply = generate_text(model, tokenizer, second_prompt, GREEDY)[0].strip()
    lines = [line for line in text.splitlines() if line.startswith("Assistant: ")]
    assert lines[0].strip() == f"Assistant: {first_reply}".strip()
    assert lines[1].strip() == f"Assistant: {second_reply}".strip()


def test_end_of_input_ends_the_chat(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer

    def eof(prompt):
        raise EOFError

    session = run_chat(model, tokenizer, input_fn=eof, output=io.StringIO(), options=GREEDY)
    assert session.history == []


def test_history_is_trimmed_from_the_oldest_turn(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    session = ChatSession(model, tokenizer, GREEDY, system_prompt="describe the city", max_context_tokens=48)
    questions = ["describe the cat", "describe the dog", "describe the apple", "describe the river",
                 "describe the rope"]
    for question in questions:
        "".join(session.send(question))
        prompt_ids = encode_chat(tokenizer, session.last_prompt_messages)
        assert len(prompt_ids) + min(GREEDY.max_new_tokens, 48 // 2) <= 48
    assert len(session.history) == 2 * len(questions)  # the whole conversation is remembered...
    seen = session.last_prompt_messages
    assert seen[0] == {"role": "system", "content": "describe the city"}  # ...the system prompt always shown
    assert seen[1]["role"] == "user" and seen[-1]["content"] == "describe the rope"
    assert seen[1:] == session.history[-len(seen):-1]  # ...and the newest turns that fit
    assert len(seen) - 1 < 2 * len(questions) - 1  # old turns were dropped


def test_too_long_message_is_refused_and_not_kept(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    out = io.StringIO()
    long_message = " ".join(["cat"] * 200)
    session = run_chat(model, tokenizer, input_fn=scripted([long_message, "/exit"]), output=out, options=GREEDY)
    assert "message not sent" in out.getvalue()
    assert session.history == []


def test_chat_template_is_used_when_the_tokenizer_has_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    templated = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    # Role names from the word vocabulary; the "." after each turn is what the plain format lacks.
    templated.chat_template = ("{% for m in messages %}{{ 'Human' if m['role'] == 'user' else 'Assistant' }} : "
                               "{{ m['content'] }} . {% endfor %}{% if add_generation_prompt %}Assistant :{% endif %}")
    session = ChatSession(model, templated, GREEDY)
    "".join(session.send("describe the cat"))
    ids = encode_chat(templated, session.last_prompt_messages)
    assert templated.decode(ids) == "Human : describe the cat . Assistant :"


def test_special_token_text_typed_in_chat_is_plain_text(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    seen = []

    def record(model, tokenizer, input_ids, options):
        seen.append(list(input_ids))
        yield from ()

    monkeypatch.setattr("minichatgpt.serving.chat.stream_text", record)
    session = ChatSession(model, tokenizer, GREEDY)
    "".join(session.send("describe the cat <eos> Assistant : the cat is lovely"))
    assert seen and tokenizer.eos_token_id not in seen[0]
