"""The embedded default: a tiny model, a word-level tokenizer and a task with a hidden preference.

Nothing here needs the network or files; everything is generated from a seed, so the three-stage
pipeline runs on a fresh clone.

The task. A user asks about an object ("Human: describe the cat"); the assistant answers with a
sentence of adjectives ("the cat is gentle , dull and bright ."). The hidden ground-truth rule: a
good answer is complete (ends with "."), is about the object that was asked about, and uses pleasant
adjectives. Its score is the number of *distinct* pleasant adjectives over the number of adjectives,
in [0, 1]; an incomplete answer, an answer about another object or without adjectives scores 0.

* SFT demonstrations are imperfect: adjectives are drawn from pleasant and unpleasant ones alike, so
  the SFT policy learns the format but only about half of its adjectives are pleasant.
* Preference pairs are contrastive edits labelled by the hidden rule only.
* PPO optimizes the learned reward model; the hidden rule is used only to label pairs and to evaluate.
"""

import random
from typing import List, Optional, Tuple

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, PreTrainedTokenizerFast

OBJECTS = ["cat", "dog", "horse", "bird", "rabbit", "apple", "bread", "soup", "cake", "cheese", "city", "beach",
           "forest", "village", "valley", "hammer", "knife", "ladder", "rope", "drill"]
PLEASANT = ["gentle", "friendly", "lovely", "bright", "fresh", "sweet", "sunny", "peaceful", "sturdy", "handy",
            "cheerful", "elegant"]
UNPLEASANT = ["boring", "dirty", "broken", "noisy", "ugly", "bland", "stale", "rusty", "gloomy", "smelly", "weak",
              "dull"]
ALL_ADJECTIVES = PLEASANT + UNPLEASANT
QUESTIONS = ["describe the {}", "tell me about the {}", "what is the {} like", "how would you describe the {}"]
FILLERS = ["the {} is", "i think the {} is", "well , the {} is"]

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"


def vocabulary() -> List[str]:
    words = {EOS, PAD, UNK, "Human", "Assistant", ":", ",", ".", "and"}
    for template in QUESTIONS + FILLERS:
        words.update(w for w in template.split() if w != "{}")
    words.update(OBJECTS)
    words.update(ALL_ADJECTIVES)
    specials = [PAD, UNK, EOS]
    return specials + sorted(words - set(specials))


def build_word_tokenizer(words: Optional[List[str]] = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built with the ``tokenizers`` library (no files, no network).

    Words are split on whitespace and punctuation; ``<pad>``, ``<unk>`` and ``<eos>`` are special.
    It has no chat template, so prompts use the plain ``Human: ... Assistant:`` format.
    """
    words = words or vocabulary()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([PAD, UNK, EOS])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def tiny_model_config(vocab_size: int, n_layer: int = 4, n_embd: int = 128, n_positions: int = 64) -> GPT2Config:
    """The built-in model: a GPT-2 of about 0.8M parameters that trains in seconds on a CPU."""
    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                      n_head=4, bos_token_id=2, eos_token_id=2, pad_token_id=0)


def _object_of(prompt: str) -> Optional[str]:
    for word in reversed(prompt.replace(":", " ").split()):
        if word in OBJECTS:
            return word
    return None


def ground_truth_score(prompt: str, response: str) -> float:
    """The hidden rule: distinct pleasant adjectives over all adjectives used, for a complete answer
    about the object asked for (else 0)."""
    obj = _object_of(prompt)
    words = response.replace(EOS, " ").split()
    adjectives = [w for w in words if w in ALL_ADJECTIVES]
    mentioned = {w for w in words if w in OBJECTS}
    if obj is None or not adjectives or words[-1] != "." or mentioned != {obj}:
        return 0.0
    return len({a for a in adjectives if a in PLEASANT}) / len(adjectives)


# A fixed quarter of the (question, object) combinations never appears in training data; evaluation
# prompts are drawn from it, so "held-out" means unseen prompts, not just another sample.
_COMBINATIONS = [(q, o) for q in QUESTIONS for o in OBJECTS]
random.Random(1234).shuffle(_COMBINATIONS)
SPLITS = {"eval": _COMBINATIONS[:len(_COMBINATIONS) // 4], "train": _COMBINATIONS[len(_COMBINATIONS) // 4:]}


def _question(rng: random.Random, split: str) -> Tuple[str, str]:
    question, obj = rng.choice(SPLITS[split])
    return question.format(obj), obj


def _sentence(rng: random.Random, obj: str, adjectives: List[str], filler: str) -> str:
    listed = adjectives[0] if len(adjectives) == 1 else " , ".join(adjectives[:-1]) + " and " + adjectives[-1]
    return f"{filler.format(obj)} {listed} ."


def _demonstration(rng: random.Random, obj: str) -> str:
    """An imperfect answer: the right format and object, pleasant and unpleasant adjectives alike."""
    return _sentence(rng, obj, rng.sample(ALL_ADJECTIVES, rng.randint(1, 3)), rng.choice(FILLERS))


def sft_records(n: int, seed: int = 0, split: str = "train") -> List[dict]:
    """``n`` Alpaca-style ``{"instruction", "output"}`` demonstrations."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        question, obj = _question(rng, split)
        records.append({"instruction": question, "output": _demonstration(rng, obj)})
    return records


def preference_records(n: int, seed: int = 1, split: str = "train") -> List[dict]:
    """``n`` ``{"prompt", "chosen", "rejected"}`` pairs ranked by the hidden rule.

    Pairs are contrastive edits, as annotators are often asked to compare: 60% are two answers in the
    demonstrations' style that differ in one adjective, 20% an answer against the same answer about
    another object, 20% an answer against the same answer cut short.
    """
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        question, obj = _question(rng, split)
        adjectives, filler = rng.sample(ALL_ADJECTIVES, rng.randint(1, 3)), rng.choice(FILLERS)
        a = _sentence(rng, obj, adjectives, filler)
        kind = rng.random()
        if kind < 0.2:
            words = a.split()
            b = " ".join(words[:rng.randrange(1, len(words) - 1)])
        elif kind < 0.4:
            b = _sentence(rng, rng.choice([o for o in OBJECTS if o != obj]), adjectives, filler)
        else:
            edited = list(adjectives)
            edited[rng.randrange(len(edited))] = rng.choice([x for x in ALL_ADJECTIVES if x not in adjectives])
            b = _sentence(rng, obj, edited, filler)
        score_a, score_b = ground_truth_score(question, a), ground_truth_score(question, b)
        if score_a == score_b:
            continue
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        records.append({"prompt": question, "chosen": chosen, "rejected": rejected})
    return records


def prompt_records(n: int, seed: int = 2, split: str = "train") -> List[dict]:
    """``n`` ``{"instruction"}`` prompts for PPO (``split="train"``) or evaluation (``split="eval"``)."""
    rng = random.Random(seed)
    return [{"instruction": _question(rng, split)[0]} for _ in range(n)]


def hidden_rule_reward(prompts: List[str], responses: List[str], **columns) -> List[float]:
    """The hidden rule as a reward function (``--reward_fn minichatgpt.demo:hidden_rule_reward``), so
    RL on the built-in task can use a verifiable reward instead of the learned reward model."""
    return [ground_truth_score(p, r) for p, r in zip(prompts, responses)]
