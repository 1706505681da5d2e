"""Several end-of-turn ids: rollouts, evaluation and serving stop on any of them.

Chat models end an assistant turn with a token that is not always the tokenizer's EOS: Llama-3
``<|eot_id|>`` (EOS ``<|end_of_text|>``), Gemma ``<end_of_turn>`` (EOS ``<eos>``), Phi-3 ``<|end|>``
(EOS ``<|endoftext|>``). Their generation configs list several EOS ids, and the terminator is what the
chat template writes after an assistant message. Tokenizers here are built with ``tokenizers``; the
tiny model is forced to emit one chosen token at every step.
"""

from copy import deepcopy

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import tiny_config
from minichatgpt.data.encoding import Encoder
from minichatgpt.nn import Actor, Critic, RewardModel
from minichatgpt.recipes.evaluate import evaluate_policy
from minichatgpt.serving.engine import GenerationOptions, encode_chat, generate_text
from minichatgpt.tokenizer import stop_token_ids, turn_terminator
from minichatgpt.trainer import PPOTrainer
from minichatgpt.trainer.strategies import NaiveStrategy

CHAT_FAMILIES = {  # family: (tokenizer EOS, turn terminator, chat template)
    "llama3": ("<|end_of_text|>", "<|eot_id|>",
               "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
    "gemma": ("<eos>", "<end_of_turn>",
              "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "phi3": ("<|endoftext|>", "<|end|>",
             "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
}
SPECIALS = ["<pad>", "<unk>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<eos>",
            "<start_of_turn>", "<end_of_turn>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>"]
WORDS = ["user", "assistant", "model", "hello", "there", "cat", "is", "nice", "."]


def chat_tokenizer(family: str, with_template: bool = True) -> PreTrainedTokenizerFast:
    eos, _, template = CHAT_FAMILIES[family]
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token="<pad>", unk_token="<unk>")
    if with_template:
        tokenizer.chat_template = template
    return tokenizer


def forced_actor(tokenizer, token_id: int, generation_eos) -> Actor:
    """A tiny GPT-2 whose greedy (and nearly every sampled) next token is always ``token_id``."""
    torch.manual_seed(0)
    actor = Actor(config=dict(tiny_config("gpt2", len(tokenizer)), tie_word_embeddings=False))
    with torch.no_grad():
        direction = torch.randn(actor.model.config.n_embd)
        actor.model.transformer.ln_f.weight.zero_()  # every final hidden state becomes ``direction``
        actor.model.transformer.ln_f.bias.copy_(direction)
        actor.model.lm_head.weight.zero_()
        actor.model.lm_head.weight[token_id] = 50 * direction / direction.norm() ** 2
    actor.model.generation_config.eos_token_id = generation_eos
    return actor


def cases():
    """(family, tokenizer with template?, generation-config EOS ids given?, which token the model emits)."""
    for family in CHAT_FAMILIES:
        yield family, True, False  # only the rendered template names the terminator
        yield family, False, True  # only the generation config lists it


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_turn_terminator_is_read_from_the_rendered_template(family):
    eos, terminator, _ = CHAT_FAMILIES[family]
    tokenizer = chat_tokenizer(family)
    assert turn_terminator(tokenizer) == terminator
    assert turn_terminator(chat_tokenizer(family, with_template=False)) is None
    ids = stop_token_ids(tokenizer)
    assert set(ids) == {tokenizer.convert_tokens_to_ids(eos), tokenizer.convert_tokens_to_ids(terminator)}
    # Training data ends each assistant reply with the terminator, as the template renders it.
    encoder = Encoder(tokenizer)
    assert encoder.response_ids("the cat is nice .")[-1] == tokenizer.convert_tokens_to_ids(terminator)
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the cat is nice ."},
                {"role": "user", "content": "there"}, {"role": "assistant", "content": "hello there"}]
    ids, _ = encoder.conversation_ids(messages, "messages", "record 1")
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(whole, add_special_tokens=False)["input_ids"]  # the template's own rendering


@pytest.mark.parametrize("family,with_template,in_generation_config", list(cases()))
def test_rollouts_evaluation_and_serving_stop_on_the_terminator(family, with_template, in_generation_config):
    eos, terminator, _ = CHAT_FAMILIES[family]
    tokenizer = chat_tokenizer(family, with_template)
    eos_id, stop_id = tokenizer.convert_tokens_to_ids(eos), tokenizer.convert_tokens_to_ids(terminator)
    actor = forced_actor(tokenizer, stop_id, [eos_id, stop_id] if in_generation_config else eos_id)
    messages = [{"role": "user", "content": "hello there"}]

    # rollouts
    config = tiny_config("gpt2", len(tokenizer))
    critic, reward_model = Critic(config=config), RewardModel(config=config)
    trainer = PPOTrainer(NaiveStrategy("cpu"), actor, critic, reward_model, deepcopy(actor),
                         torch.optim.Adam(actor.parameters()), torch.optim.Adam(critic.parameters()),
                         tokenizer=tokenizer, max_new_tokens=5, do_sample=False)
    prompt = torch.tensor([encode_chat(tokenizer, messages)])
    experience = trainer.make_experience({"input_ids": prompt, "attention_mask": torch.ones_like(prompt)})
    assert experience.action_mask.tolist() == [[1]]

    # evaluation
    result = evaluate_policy(actor, tokenizer, [messages], max_new_tokens=5)
    assert result["response_length"] == 1

    # serving
    text, finish_reason, completion_tokens = generate_text(actor.model.eval(), tokenizer, prompt[0].tolist(),
                                                           GenerationOptions(max_new_tokens=5, temperature=0.0))
    assert (text, finish_reason, completion_tokens) == ("", "stop", 1)


def test_generate_accepts_several_eos_ids():
    tokenizer = chat_tokenizer("llama3", with_template=False)
    stop_id = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    actor = forced_actor(tokenizer, stop_id, None).eval()
    rollout = actor.generate(torch.tensor([[20, 21]]), torch.ones(1, 2, dtype=torch.long), max_new_tokens=4,
                             do_sample=False, eos_token_id=[tokenizer.eos_token_id, stop_id],
                             pad_token_id=tokenizer.pad_token_id)
    assert rollout.action_mask.tolist() == [[1]] and rollout.sequences[0, -1] == stop_id
