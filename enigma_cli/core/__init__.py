"""Pure tensor functions: losses, estimators and rewards shared by every enigma command.

Public names are imported lazily so that `enigma --help` stays fast and each module can be
used on its own: ``from enigma_cli.core import sinkhorn_divergence``.
"""

from importlib import import_module

_EXPORTS = {
    # GRPO (method.md §2)
    "grpo_advantages": "grpo",
    "grpo_loss": "grpo",
    "TRL_LOSS_TYPES": "grpo",
    "importance_log_weight": "surrogates",
    "clip_surrogate": "surrogates",
    "cispo_surrogate": "surrogates",
    "sapo_surrogate": "surrogates",
    "SURROGATES": "surrogates",
    "aggregate": "aggregation",
    "AGGREGATIONS": "aggregation",
    "k3_kl": "kl",
    # InfoNCE, SAMI and the Sufficiency Index (method.md §3-4)
    "sami_loss": "infonce",
    "infonce_bounds": "infonce",
    "pointwise_critic": "infonce",
    "sufficiency_index": "infonce",
    "bootstrap_si": "infonce",
    # Entropic optimal transport (method.md §5)
    "SinkhornConvergenceWarning": "sinkhorn",
    "entropic_ot": "sinkhorn",
    "sinkhorn_divergence": "sinkhorn",
    # Geometry (method.md §6)
    "effective_rank": "geometry",
    "participation_ratio": "geometry",
    "twonn_dimension": "geometry",
    "linear_cka": "geometry",
    "principal_angles": "geometry",
    "anisotropy": "geometry",
    "fisher_rao_distance": "geometry",
    "kl_divergence": "geometry",
    # Format rewards (method.md §1)
    "parse_completion": "format_rewards",
    "ParsedCompletion": "format_rewards",
    "strict_format_reward": "format_rewards",
    "soft_format_reward": "format_rewards",
    "tag_count_reward": "format_rewards",
    "format_reward": "format_rewards",
    "normalize_answer": "format_rewards",
    # Rewards that keep a signal after a format warm-up (method.md §8)
    "graded_format_reward": "graded_format",
    "saturated_groups": "saturated",
    "fill_saturated_groups": "saturated",
    # Answer-level rewards (method.md §7)
    "answer_frequencies": "answer_rewards",
    "target_distribution": "answer_rewards",
    "coherence_rewards": "answer_rewards",
    "pairwise_coherence_rewards": "answer_rewards",
    "diversity_rewards": "answer_rewards",
    "gibbs_rewards": "answer_rewards",
    "majority_vote": "answer_stats",
    "group_answer_stats": "answer_stats",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - built from the lazy export table above


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'enigma_cli.core' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
