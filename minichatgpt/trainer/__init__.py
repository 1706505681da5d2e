"""Trainers of the three stages and their callbacks."""

from .callbacks import Callback, MetricsLogger, PerformanceEvaluator
from .ppo import PPOTrainer
from .rm import RewardModelTrainer
from .sft import SFTTrainer

__all__ = ["SFTTrainer", "RewardModelTrainer", "PPOTrainer", "Callback", "MetricsLogger", "PerformanceEvaluator"]
