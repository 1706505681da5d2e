"""Rollouts turned into PPO experience: the ``Experience`` batch, its maker, the replay buffer."""

from .buffer import ReplayBuffer
from .experience import Experience, collate_experiences
from .kl_controller import AdaptiveKLController, FixedKLController
from .maker import ExperienceMaker
from .normalizer import RunningMoments

__all__ = ["Experience", "collate_experiences", "ExperienceMaker", "ReplayBuffer", "FixedKLController",
           "AdaptiveKLController", "RunningMoments"]
