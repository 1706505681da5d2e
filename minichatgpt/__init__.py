"""minichatgpt: SFT -> reward model -> PPO (with LoRA and PPO-ptx) on any Hugging Face causal LM."""

__version__ = "0.1.0"
