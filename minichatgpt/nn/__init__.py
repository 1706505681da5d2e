"""Models of the RLHF recipe over any Hugging Face causal LM.

``GPTActor``, ``OPTCritic``, ``LlamaRM``... are the same generic classes with a family default config
(used only when neither ``pretrained=`` nor ``config=`` is given); any other architecture works
through ``Actor``/``Critic``/``RewardModel`` directly.
"""

from transformers import BloomConfig, GPT2Config, LlamaConfig, OPTConfig

from .generation import Rollout, generate
from .loading import load_model, load_tokenizer
from .lora import adapters_disabled, apply_lora, is_lora, merged_copy, save_adapter
from .models import LM, Actor, Critic, RewardModel, rebuilt_copy


def _family(base: type, name: str, config_cls: type) -> type:
    doc = f"{base.__name__} whose default config is ``{config_cls.__name__}()``."
    return type(name, (base,), {"default_config": config_cls, "__doc__": doc, "__module__": __name__})


_FAMILIES = {"GPT": GPT2Config, "OPT": OPTConfig, "BLOOM": BloomConfig, "Llama": LlamaConfig}
_ROLES = {"Actor": Actor, "Critic": Critic, "RM": RewardModel, "LM": LM}

for _prefix, _config in _FAMILIES.items():
    for _suffix, _base in _ROLES.items():
        globals()[_prefix + _suffix] = _family(_base, _prefix + _suffix, _config)

__all__ = ["Actor", "Critic", "RewardModel", "LM", "Rollout", "generate", "load_model", "load_tokenizer",
           "apply_lora", "adapters_disabled", "is_lora", "merged_copy", "save_adapter", "rebuilt_copy"] + \
    [p + s for p in _FAMILIES for s in _ROLES]
