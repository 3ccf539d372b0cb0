"""`enigma score-principles`: InfoNCE bounds and the Sufficiency Index of principle sets, before training."""

from .config import CRITICS, SATURATION, ScoreConfig
from .scoring import CRITIC_VARIANTS, CriticScores, SetScore, critic_matrices, score_set, set_score

__all__ = ["CRITICS", "CRITIC_VARIANTS", "SATURATION", "CriticScores", "ScoreConfig", "SetScore", "critic_matrices",
           "score_set", "set_score"]
