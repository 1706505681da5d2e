"""Actor, critic and reward model: thin wrappers over any Hugging Face causal LM.

* ``Actor`` (and ``LM`` for SFT): the causal LM itself; ``forward`` returns logits, the caller turns
  them into log-probs, entropy or an LM loss with ``minichatgpt.functional``.
* ``Critic``: the LM's backbone plus a linear value head, one value per response token.
* ``RewardModel``: backbone plus a linear head, one score per sequence read at the last real token.

Critic and reward model save in the layout of ``AutoModelForSequenceClassification`` (backbone +
``score`` head, ``num_labels=1``), so plain ``transformers`` loads a trained reward model.
"""

import os
from contextlib import nullcontext
from typing import Dict, Optional

import torch
import torch.nn as nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from ..functional import last_token_index
from .generation import Rollout, accepts_position_ids, generate, position_ids_from_mask
from .loading import ConfigLike, load_model, quiet_transformers, read_checkpoint_tensor, to_config
from .lora import adapters_disabled, apply_lora, frozen_base, is_lora, save_adapter, trained_base_parameters
from .saving import merged_state, save_streamed

#: Where ``save_pretrained`` also writes a LoRA model's adapters (its weights hold them merged).
ADAPTER_DIR = "adapter"


def _build(model: Optional[nn.Module], pretrained: Optional[str], config: ConfigLike, head: str,
           default_config: Optional[type], checkpoint: bool, lora_rank: int, lora_train_bias: str,
           lora_alpha: Optional[float], task_type: Optional[str], load_options: dict) -> nn.Module:
    """Shared constructor logic: pick/load the model (``load_options`` go to ``load_model``), gradient
    checkpointing, LoRA."""
    if model is None:
        if pretrained is None and config is None:
            if default_config is None:
                raise ValueError("pass a model, pretrained= (hub name, directory or .gguf file) or config=")
            config = default_config()
        model = load_model(pretrained, config, head=head, **load_options)
    elif head == "backbone" and hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        model = model.base_model  # a causal LM was given: keep its backbone only
    if checkpoint:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank > 0 and not is_lora(model):
        model = apply_lora(model, lora_rank, alpha=lora_alpha, train_bias=lora_train_bias, task_type=task_type)
    return model


def _hf_config(model: nn.Module):
    return (model.get_base_model() if is_lora(model) else model).config


def backbone_output_size(config) -> int:
    """Width of the backbone's last hidden states, which the value head reads.

    Usually ``hidden_size``; OPT checkpoints such as opt-350m project the decoder output down to
    ``word_embed_proj_dim`` (their ``AutoModelForSequenceClassification`` head is sized the same way).
    """
    return getattr(config, "word_embed_proj_dim", None) or config.hidden_size


def _save_tokenizer(directory: str, tokenizer: Optional[PreTrainedTokenizerBase]) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def rebuilt_copy(module: nn.Module, state_dict: Dict[str, torch.Tensor]) -> nn.Module:
    """A plain single-process copy of an ``Actor``/``Critic``/``RewardModel`` holding ``state_dict``.

    Used to write Hugging Face directories from sharded training (FSDP, ZeRO-3), whose modules
    can be neither deep-copied nor saved directly: the same structure (LoRA included) is built on the
    meta device, then the gathered tensors are assigned into it.
    """
    lora = {}
    if is_lora(module.model):
        peft_config = module.model.peft_config["default"]
        lora = dict(lora_rank=peft_config.r, lora_alpha=peft_config.lora_alpha, lora_train_bias=peft_config.bias)
    with torch.device("meta"):
        clone = type(module)(config=_hf_config(module.model), **lora)
    clone.load_state_dict(state_dict, assign=True)
    return clone


class Actor(nn.Module):
    """The policy: a causal LM that generates responses and scores their tokens.

    Args:
        model: an existing Hugging Face causal LM (takes precedence over ``pretrained``/``config``).
        pretrained: hub name, local ``save_pretrained`` directory, or ``.gguf`` file.
        config: config (object, dict or path) for a randomly initialized model.
        checkpoint: enable gradient checkpointing.
        lora_rank: > 0 adds LoRA adapters of that rank and freezes everything else.
        lora_train_bias: ``"none"``, ``"all"`` or ``"lora_only"``.
        attn_implementation: ``"sdpa"``, ``"flash_attention_2"`` or ``"eager"`` (None: transformers' choice).
        trust_remote_code: allow a hub checkpoint's own modelling code to run.
        dtype: load the weights in this dtype (default float32); bf16 halves the memory of weights that stay
            frozen (a LoRA base, a reference or reward model) under a bf16 strategy.
    """

    default_config: Optional[type] = None

    def __init__(self, model: Optional[PreTrainedModel] = None, *, pretrained: Optional[str] = None,
                 config: ConfigLike = None, checkpoint: bool = False, lora_rank: int = 0,
                 lora_train_bias: str = "none", lora_alpha: Optional[float] = None,
                 attn_implementation: Optional[str] = None, trust_remote_code: bool = False,
                 dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.model = _build(model, pretrained, config, "causal_lm", self.default_config, checkpoint, lora_rank,
                            lora_train_bias, lora_alpha, "CAUSAL_LM",
                            dict(attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, dtype=dtype))
        self._use_position_ids = accepts_position_ids(self.model)

    def forward(self, sequences: torch.Tensor, attention_mask: torch.Tensor,
                num_actions: Optional[int] = None) -> torch.Tensor:
        """Logits aligned with the tokens they predict.

        Args:
            sequences: (B, T) token ids (prompts may be left-padded).
            attention_mask: (B, T).
            num_actions: A; when given, only the logits that predict the last A tokens are computed.
        Returns:
            (B, A, V) logits where ``[:, i]`` predicts ``sequences[:, T - A + i]``; or, with
            ``num_actions=None``, the usual (B, T, V) next-token logits.
        """
        kwargs = {"position_ids": position_ids_from_mask(attention_mask)} if self._use_position_ids else {}
        if num_actions is None:
            return self.model(input_ids=sequences, attention_mask=attention_mask, **kwargs).logits
        # Logits at position t predict token t + 1, so A + 1 positions cover the A response tokens.
        logits = self.model(input_ids=sequences, attention_mask=attention_mask, logits_to_keep=num_actions + 1,
                            **kwargs).logits
        return logits[:, -num_actions - 1:-1]

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **generate_kwargs) -> Rollout:
        """Sample responses with the KV cache; see ``minichatgpt.nn.generation.generate``."""
        return generate(self.model, input_ids, attention_mask, **generate_kwargs)

    def freeze_reference(self) -> str:
        """Fix the reference policy that ``reference()`` computes as: the actor as it is now, adapters off.

        When LoRA also trains base biases (``lora_train_bias`` all / lora_only), they are snapshotted
        now and restored inside ``reference()``, so the KL is not measured against a moving target.
        Returns a sentence saying which reference was chosen, for the log.
        """
        if not is_lora(self.model):
            raise ValueError("a shared reference model needs an actor with LoRA adapters (lora_rank > 0)")
        self._reference = (self.model, frozen_base(self.model))  # a deep copy of the actor freezes its own
        biases = len(trained_base_parameters(self.model))
        return ("reference policy: the actor with LoRA adapters off" +
                (f" and its {biases} trained bias tensors set back to a snapshot taken now" if biases else ""))

    def reference(self):
        """Context in which this actor computes as its frozen base model (LoRA adapters off; trained
        biases as they were at ``freeze_reference``, which the first call does when not done before)."""
        if getattr(self, "_reference", (None,))[0] is not self.model:
            self.freeze_reference()
        return self._reference[1]()

    def save_pretrained(self, directory: str, tokenizer: Optional[PreTrainedTokenizerBase] = None,
                        dtype: Optional[torch.dtype] = None) -> None:
        """Write a plain Hugging Face directory (adapters merged); adapters also go to ``adapter/``.

        Weights are written in ``dtype`` (None: as held), merged and cast one tensor at a time
        (``nn.saving``): no merged copy of the model is built.
        """
        os.makedirs(directory, exist_ok=True)
        base, state, deltas = merged_state(self.model)
        with quiet_transformers():
            save_streamed(base, directory, state, deltas, dtype)
        if is_lora(self.model):
            save_adapter(self.model, os.path.join(directory, ADAPTER_DIR))
        _save_tokenizer(directory, tokenizer)


class LM(Actor):
    """The causal LM trained by SFT: the same module as ``Actor`` (``forward`` returns logits)."""


class _ScalarHeadModel(nn.Module):
    """Backbone + bias-free linear head; shared storage for ``Critic`` and ``RewardModel``."""

    default_config: Optional[type] = None

    def __init__(self, model: Optional[nn.Module] = None, value_head: Optional[nn.Linear] = None, *,
                 pretrained: Optional[str] = None, config: ConfigLike = None, checkpoint: bool = False,
                 lora_rank: int = 0, lora_train_bias: str = "none", lora_alpha: Optional[float] = None,
                 attn_implementation: Optional[str] = None, trust_remote_code: bool = False,
                 dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.model = _build(model, pretrained, config, "backbone", self.default_config, checkpoint, lora_rank,
                            lora_train_bias, lora_alpha, "FEATURE_EXTRACTION",
                            dict(attn_implementation=attn_implementation, trust_remote_code=trust_remote_code, dtype=dtype))
        hidden_size = backbone_output_size(_hf_config(self.model))
        if value_head is None:
            value_head = nn.Linear(hidden_size, 1, bias=False)
            saved = read_checkpoint_tensor(pretrained, "score.weight") if pretrained and os.path.isdir(pretrained) else None
            if saved is not None and saved.shape == value_head.weight.shape:
                value_head.weight.data.copy_(saved)
            else:
                nn.init.normal_(value_head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        self.value_head = value_head
        self._use_position_ids = accepts_position_ids(self.model)

    def _hidden_states(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"position_ids": position_ids_from_mask(attention_mask)} if self._use_position_ids else {}
        return self.model(input_ids=sequences, attention_mask=attention_mask, **kwargs).last_hidden_state

    def save_pretrained(self, directory: str, tokenizer: Optional[PreTrainedTokenizerBase] = None,
                        dtype: Optional[torch.dtype] = None) -> None:
        """Write an ``AutoModelForSequenceClassification`` directory (``num_labels=1``, ``score`` head), in
        ``dtype`` (None: as held), adapters merged tensor by tensor as written (``nn.saving``)."""
        os.makedirs(directory, exist_ok=True)
        backbone, backbone_state, deltas = merged_state(self.model)
        config = to_config(backbone.config.to_dict())
        config.num_labels = 1
        if tokenizer is not None:
            config.pad_token_id = tokenizer.pad_token_id
        with torch.device("meta"):
            classifier = AutoModelForSequenceClassification.from_config(config)
        prefix = classifier.base_model_prefix
        state = {f"{prefix}.{k}": v for k, v in backbone_state.items()}
        state["score.weight"] = self.value_head.weight
        classifier.load_state_dict(state, strict=False, assign=True)
        classifier.tie_weights()
        with quiet_transformers():
            save_streamed(classifier, directory, classifier.state_dict(),
                          {f"{prefix}.{k}": v for k, v in deltas.items()}, dtype)
        if is_lora(self.model):
            save_adapter(self.model, os.path.join(directory, ADAPTER_DIR))
        _save_tokenizer(directory, tokenizer)


class Critic(_ScalarHeadModel):
    """Value function: one value per response token, for the state before that token is generated."""

    def forward(self, sequences: torch.Tensor, attention_mask: torch.Tensor, num_actions: int) -> torch.Tensor:
        """Values (B, A) of the last A tokens: hidden state at t - 1 gives the value before token t."""
        hidden = self._hidden_states(sequences, attention_mask)[:, -num_actions - 1:-1]  # (B, A, H)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()


class RewardModel(_ScalarHeadModel):
    """Scores whole sequences: (B,) read at the last real (non-pad) token, whatever the padding side.

    ``use_base_weights=True`` makes a LoRA backbone score with its adapters disabled; this is how a
    reward model shares one frozen backbone with a LoRA critic that was initialized from it.
    """

    def __init__(self, model: Optional[nn.Module] = None, value_head: Optional[nn.Linear] = None, *,
                 use_base_weights: bool = False, **kwargs):
        super().__init__(model, value_head, **kwargs)
        if use_base_weights and not is_lora(self.model):
            raise ValueError("use_base_weights=True needs a LoRA backbone")
        self.use_base_weights = use_base_weights

    @classmethod
    def sharing_backbone(cls, critic: Critic) -> "RewardModel":
        """A reward model that reuses ``critic``'s frozen base weights and a frozen copy of its head.

        Valid when the critic was initialized from the reward model and trains only LoRA adapters
        (``lora_train_bias="none"``) and its own value head.
        """
        peft_config = getattr(critic.model, "peft_config", {}).get("default")
        if peft_config is None or peft_config.bias != "none":
            raise ValueError("sharing a backbone needs a LoRA critic with lora_train_bias='none'")
        head = nn.Linear(critic.value_head.in_features, 1, bias=False)
        head.weight.data.copy_(critic.value_head.weight.data)
        head.requires_grad_(False)
        return cls(critic.model, head, use_base_weights=True)

    def forward(self, sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with adapters_disabled(self.model) if self.use_base_weights else nullcontext():
            hidden = self._hidden_states(sequences, attention_mask)  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        hidden = hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # (B, H)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
