"""`enigma evaluate`: format rate, strict and flexible accuracy, majority vote and answer entropy of a model."""

from .config import EvaluateConfig
from .evaluation import EvalSettings, evaluate

__all__ = ["EvalSettings", "EvaluateConfig", "evaluate"]
