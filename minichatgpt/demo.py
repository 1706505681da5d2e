"""The embedded default: a tiny model, a word-level tokenizer and a task with a hidden preference.

Nothing here needs the network or files; everything is generated from a seed, so the three-stage
pipeline runs on a fresh clone.

The task. A user asks about an object ("Human: describe the cat"); the assistant answers with a
sentence of adjectives ("the cat is gentle , sunny and loyal ."). The hidden ground-truth rule: an
adjective is good when it fits the object's category (animals are *gentle*, food is *tasty*...).
The score of a response is the number of *distinct* fitting adjectives divided by the number of
adjectives, in [0, 1]; a response with no adjective scores 0.

* SFT demonstrations are imperfect: adjectives are drawn uniformly from all categories, so the SFT
  policy learns the format but only about one fitting adjective in five.
* Preference pairs compare two such responses and are labelled by the hidden rule only.
* PPO optimizes the learned reward model; the hidden rule is used only to label pairs and to evaluate.
"""

import random
from typing import Dict, List, Optional, Tuple

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, PreTrainedTokenizerFast

CATEGORIES: Dict[str, Dict[str, List[str]]] = {
    "animal": {"objects": ["cat", "dog", "horse", "bird", "rabbit", "fox"],
               "adjectives": ["gentle", "loyal", "playful", "fluffy", "friendly", "curious"]},
    "food": {"objects": ["apple", "bread", "soup", "cake", "rice", "cheese"],
             "adjectives": ["tasty", "fresh", "sweet", "crispy", "healthy", "warm"]},
    "place": {"objects": ["city", "beach", "forest", "village", "river", "valley"],
              "adjectives": ["sunny", "quiet", "scenic", "peaceful", "lively", "green"]},
    "tool": {"objects": ["hammer", "knife", "ladder", "rope", "wrench", "drill"],
             "adjectives": ["sturdy", "sharp", "handy", "durable", "precise", "useful"]},
}
NEUTRAL_ADJECTIVES = ["old", "big", "small", "strange", "plain", "odd"]
QUESTIONS = ["describe the {}", "tell me about the {}", "what is the {} like", "how would you describe the {}"]
FILLERS = ["the {} is", "i think the {} is", "well , the {} is"]

OBJECT_CATEGORY = {obj: cat for cat, spec in CATEGORIES.items() for obj in spec["objects"]}
FITTING = {cat: set(spec["adjectives"]) for cat, spec in CATEGORIES.items()}
ALL_ADJECTIVES = [a for spec in CATEGORIES.values() for a in spec["adjectives"]] + NEUTRAL_ADJECTIVES

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"


def vocabulary() -> List[str]:
    words = {EOS, PAD, UNK, "Human", "Assistant", ":", ",", ".", "and"}
    for template in QUESTIONS + FILLERS:
        words.update(w for w in template.split() if w != "{}")
    words.update(OBJECT_CATEGORY)
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
        if word in OBJECT_CATEGORY:
            return word
    return None


def ground_truth_score(prompt: str, response: str) -> float:
    """The hidden rule: distinct adjectives that fit the prompt's object, over all adjectives used."""
    obj = _object_of(prompt)
    adjectives = [w for w in response.replace(EOS, " ").split() if w in ALL_ADJECTIVES]
    if obj is None or not adjectives:
        return 0.0
    fitting = {a for a in adjectives if a in FITTING[OBJECT_CATEGORY[obj]]}
    return len(fitting) / len(adjectives)


# A fixed quarter of the (question, object) combinations never appears in training data; evaluation
# prompts are drawn from it, so "held-out" means unseen prompts, not just another sample.
_COMBINATIONS = [(q, o) for q in QUESTIONS for o in sorted(OBJECT_CATEGORY)]
random.Random(1234).shuffle(_COMBINATIONS)
SPLITS = {"eval": _COMBINATIONS[:len(_COMBINATIONS) // 4], "train": _COMBINATIONS[len(_COMBINATIONS) // 4:]}


def _question(rng: random.Random, split: str) -> Tuple[str, str]:
    question, obj = rng.choice(SPLITS[split])
    return question.format(obj), obj


def _sentence(rng: random.Random, obj: str, adjectives: List[str], filler: str) -> str:
    listed = adjectives[0] if len(adjectives) == 1 else " , ".join(adjectives[:-1]) + " and " + adjectives[-1]
    return f"{filler.format(obj)} {listed} ."


def _demonstration(rng: random.Random, obj: str) -> str:
    """An imperfect answer: the right format, adjectives drawn from every category alike."""
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

    Each pair is a contrastive edit, as annotators are often asked to compare: two answers in the
    demonstrations' style that differ in one adjective, so every label says which of two adjectives
    suits the object better.
    """
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        question, obj = _question(rng, split)
        adjectives, filler = rng.sample(ALL_ADJECTIVES, rng.randint(1, 3)), rng.choice(FILLERS)
        edited = list(adjectives)
        edited[rng.randrange(len(edited))] = rng.choice([a for a in ALL_ADJECTIVES if a not in adjectives])
        a, b = _sentence(rng, obj, adjectives, filler), _sentence(rng, obj, edited, filler)
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
