"""Trainers of the three stages, of DPO, and their callbacks."""

from .callbacks import Callback, MetricsLogger, PerformanceEvaluator
from .dpo import DPOTrainer
from .ppo import PPOTrainer
from .rm import RewardModelTrainer
from .sft import SFTTrainer

__all__ = ["SFTTrainer", "RewardModelTrainer", "PPOTrainer", "DPOTrainer", "Callback", "MetricsLogger", "PerformanceEvaluator"]
