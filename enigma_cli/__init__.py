"""enigma: principle scoring, ENIGMA training and manifold analysis for small language models."""

__version__ = "0.1.0"
