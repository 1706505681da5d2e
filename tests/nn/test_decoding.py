"""The decode core's running batch: requests that join and leave at token boundaries compute what they
would alone. Greedy tokens and their log-probs are compared with Hugging Face ``generate`` run on each
prompt alone; seeded sampling, stop strings, token budgets and cancellation are per request."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FAMILIES, scramble_weights
from minichatgpt.nn.decoding import DecodeBatch, DecodeRequest, SamplingParams

EOS = (2,)
GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)
# step -> (key, prompt, max_new_tokens) joining before that step. "long" is longer than the running
# cache when it joins (the running rows get more left padding); "short" leaves first (columns trimmed).
SCHEDULE = {0: [("a", [5, 6, 7], 10)],
            2: [("short", [8, 9, 10, 11, 12, 13], 3), ("b", [14, 15], 12)],
            5: [("long", [16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28], 7), ("c", [29], 9)]}


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tiny_model_dirs):
    """The tiny model with larger random weights, so that greedy replies vary from token to token."""
    return scramble_weights(AutoModelForCausalLM.from_pretrained(tiny_model_dirs[request.param]).eval())


def greedy_params(key, n):
    return SamplingParams(max_new_tokens=n, temperature=0.0)


def run(model, schedule, params_for=greedy_params, cancel_at=None, **request_kwargs):
    """{key: [events]} of a batch that the requests of ``schedule`` join at their steps."""
    batch, events, step = DecodeBatch(model), {}, 0
    while step <= max(schedule) or len(batch):
        joining = schedule.get(step, [])
        batch.add([DecodeRequest(p, params_for(k, n), EOS, key=k, **request_kwargs) for k, p, n in joining])
        for key, _, _ in joining:
            events[key] = []
        if cancel_at and step == cancel_at[0]:
            for request, event in batch.cancel([cancel_at[1]]):
                events[request.key].append(event)
        for request, event in batch.step() if len(batch) else []:
            events[request.key].append(event)
        step += 1
    return events


def hf_alone(model, prompt, n):
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=list(EOS), pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):]
    log_probs = torch.stack([torch.log_softmax(l[0].float(), -1)[t] for l, t in zip(out.logits, tokens)])
    return tokens.tolist(), log_probs


def test_requests_joining_and_leaving_a_running_batch_match_hf_generate_alone(model):
    events = run(model, SCHEDULE)
    produced = set()
    for key, prompt, n in (r for joining in SCHEDULE.values() for r in joining):
        tokens, log_probs = hf_alone(model, prompt, n)
        assert [e.token for e in events[key]] == tokens, key
        torch.testing.assert_close(torch.tensor([e.log_prob for e in events[key]]), log_probs, rtol=1e-4, atol=1e-4)
        assert events[key][-1].finish_reason == ("stop" if tokens[-1] in EOS else "length")
        assert [e.count for e in events[key]] == list(range(1, len(tokens) + 1))
        produced.update(tokens)
    assert len(produced) >= 5  # the replies vary: the comparison can tell tokens apart


def test_the_batch_computes_only_running_rows_and_drops_unused_padding(model):
    batch = DecodeBatch(model)
    batch.add([DecodeRequest([5, 6, 7, 8, 9, 10, 11, 12], SamplingParams(max_new_tokens=2, temperature=0.0), key="long"),
               DecodeRequest([5], SamplingParams(max_new_tokens=6, temperature=0.0), key="short")])
    assert batch.attention_mask.shape == (2, 8)
    batch.step()
    batch.step()  # "long" ends here; the 7 columns only it used are cut before the next forward
    assert len(batch) == 1 and batch.attention_mask.shape == (1, 3)  # the prompt token and two sampled ones
    assert batch.cache.get_seq_length() == 3 and batch.cache.layers[0].keys.size(0) == 1


def test_a_seeded_sampled_request_draws_the_same_tokens_alone_and_in_a_batch(model):
    def params(key, n):
        return SamplingParams(max_new_tokens=n, temperature=1.0, top_p=0.9, seed=11) if key == "b" else \
            SamplingParams(max_new_tokens=n, temperature=1.3, seed=None)

    batched = run(model, SCHEDULE, params)["b"]
    alone = run(model, {0: [("b", [14, 15], 12)]}, params)["b"]
    assert [e.token for e in batched] == [e.token for e in alone]
    greedy = run(model, {0: [("b", [14, 15], 12)]})["b"]
    other_seed = run(model, {0: [("b", [14, 15], 12)]},
                     lambda k, n: SamplingParams(max_new_tokens=n, temperature=1.0, top_p=0.9, seed=12))["b"]
    assert [e.token for e in alone] != [e.token for e in other_seed] or \
        [e.token for e in alone] != [e.token for e in greedy]


def test_a_cancelled_request_leaves_and_the_others_are_undisturbed(model):
    events = run(model, SCHEDULE, cancel_at=(4, "a"))
    assert events["a"][-1].finish_reason == "cancelled" and events["a"][-1].token is None
    assert len(events["a"]) == 5  # four tokens, then the cancellation
    for key, prompt, n in SCHEDULE[2] + SCHEDULE[5]:
        assert [e.token for e in events[key]] == hf_alone(model, prompt, n)[0], key


def test_stop_strings_end_one_request_and_not_its_neighbours(model, word_tokenizer):
    def free_text(prompt):
        return "".join(e.text for e in run(model, {0: [("b", prompt, 12)]}, tokenizer=word_tokenizer)["b"])

    prompt = max(([14, 15], [30, 31, 32], [40], [8, 9, 10]), key=lambda p: len(free_text(p).split()))
    text = free_text(prompt)
    words = text.split()
    assert len(words) >= 4, text
    stop = " " + words[2]
    stopped = run(model, {0: [("b", prompt, 12), ("a", [5, 6, 7], 10)]}, tokenizer=word_tokenizer,
                  params_for=lambda k, n: SamplingParams(max_new_tokens=n, temperature=0.0,
                                                         stop=(stop,) if k == "b" else ()))
    assert "".join(e.text for e in stopped["b"]) == text[:text.find(stop)]
    assert stopped["b"][-1].finish_reason == "stop"
    assert [e.token for e in stopped["a"]] == hf_alone(model, [5, 6, 7], 10)[0]


def test_an_empty_prompt_is_refused_naming_the_request(model):
    with pytest.raises(ValueError, match="empty prompt.*'x'"):
        DecodeBatch(model).add([DecodeRequest([], GREEDY, key="x")])
