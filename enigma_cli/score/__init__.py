"""`enigma score-principles`: InfoNCE bounds and the Sufficiency Index of principle sets, before training."""

from .config import ScoreConfig
from .scoring import SATURATION, SetScore, critic_matrices, score_set

__all__ = ["SATURATION", "ScoreConfig", "SetScore", "critic_matrices", "score_set"]
