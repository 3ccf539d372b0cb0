"""`enigma analyze-manifold`: information geometry of trained checkpoints against their base (see `analysis`)."""

from .analysis import COLUMNS, METRICS, PLOT_METRICS, analyze, default_principle_set, layer_rows
from .completions import (
    COMPLETIONS_FILE,
    Completions,
    base_identity,
    completions_key,
    generate_completions,
    load_completions,
    save_completions,
)
from .config import ManifoldConfig
from .metrics import PROBE_CS, decodability, distribution_metrics, intrinsic_metrics, reference_metrics
from .shape import ModelShape, analysed_layers, check_compatible, parse_layers
from .states import States, gather_states, sample_tokens

__all__ = [
    "COLUMNS",
    "COMPLETIONS_FILE",
    "METRICS",
    "PLOT_METRICS",
    "PROBE_CS",
    "Completions",
    "ManifoldConfig",
    "ModelShape",
    "States",
    "analysed_layers",
    "analyze",
    "base_identity",
    "check_compatible",
    "completions_key",
    "decodability",
    "default_principle_set",
    "distribution_metrics",
    "gather_states",
    "generate_completions",
    "intrinsic_metrics",
    "layer_rows",
    "load_completions",
    "parse_layers",
    "reference_metrics",
    "sample_tokens",
    "save_completions",
]
