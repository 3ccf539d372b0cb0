"""What a study measures of each training run, and which direction of each would support the paper's claim.

From the run's `metrics.csv` (one row per step):

- ``reward_std_late``: mean within-batch reward standard deviation after a burn-in (the first 20% of steps): how
  much the policy still disagrees with itself once the format is learnt;
- ``reward_change``: mean |Δ reward_mean| from step to step after the burn-in — the steadiness of training;
- ``grad_norm_sd``: standard deviation of the gradient norm after the burn-in;
- ``reward_final``, ``kl_final``, ``drift_final``, ``mi_final``: means over the last 10% of steps of the mean
  reward, the k3 KL to the reference, the Sinkhorn drift of hidden states and the in-training MI bound ``mi_sym``
  (the last is SI measured again, on score-principles' scale: the sum critic of `train.terms.critic_metrics`; not
  an outcome the claim is about, it is reported for completeness). Runs logged before the one SI wrote SAMI's
  mean-token bound under ``mi_sym``, about a tenth of the sum critic's; do not pool ``mi_final`` across the two.

From the evaluation (with and without the set's principles in the prompt) and the post-training SI: accuracy,
majority-vote accuracy and format rate on held-out questions, and ``post_si``.

The claim (ENIGMA's abstract): higher pre-training SI goes with steadier training and a larger gain over the
GRPO-only ablation. `EXPECTED` says, per outcome, which sign of ρ(SI, outcome) supports it (None: no prediction);
those outcomes are the claim's, and their p-values are corrected for being tested together (`analysis.holm`).
"""

from __future__ import annotations

import math

import pandas as pd

BURN_IN = 0.2
TAIL = 0.1

#: sign of ρ(pre-training SI, outcome) that supports the claim; None where the claim predicts nothing
EXPECTED = {
    "reward_std_late": -1,
    "reward_change": -1,
    "grad_norm_sd": -1,
    "accuracy": None,
    "majority_accuracy": None,
    "accuracy_gain": +1,
    "majority_accuracy_gain": +1,
    "kl_final": None,
    "drift_final": None,
    "post_si": None,  # SI measured again: a check that training kept the principles apart, not the claim
    # --outcome-tasks (lm-evaluation-harness): reported beside the claim's outcomes, not yet tested with them
    "downstream": None,
    "downstream_gain": +1,  # the paper's own gain (lm-eval benchmarks), with --outcome-tasks
}
LABELS = {
    "reward_std_late": "reward std after burn-in",
    "reward_change": "mean |Δ reward| per step",
    "grad_norm_sd": "grad-norm SD",
    "accuracy": "accuracy@1 (held out)",
    "majority_accuracy": "majority-vote accuracy",
    "accuracy_gain": "accuracy gain over GRPO-only",
    "majority_accuracy_gain": "majority-vote gain over GRPO-only",
    "kl_final": "KL to the base (final)",
    "drift_final": "Sinkhorn drift (final)",
    "post_si": "SI after training",
    "downstream": "lm-eval score (--outcome-tasks)",
    "downstream_gain": "lm-eval gain over GRPO-only",
}


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(df[name], errors="coerce") if name in df else pd.Series(math.nan, index=df.index)


def training_outcomes(metrics: pd.DataFrame) -> dict[str, float]:
    """The steadiness and end-of-training outcomes of one run's metrics table."""
    df = metrics.sort_values("step").reset_index(drop=True)
    n = len(df)
    if n == 0:
        return {k: math.nan for k in ("reward_std_late", "reward_change", "grad_norm_sd", "reward_final",
                                      "kl_final", "drift_final", "mi_final")}
    late = df.iloc[min(round(BURN_IN * n), n - 1):]
    tail = df.iloc[max(0, n - max(1, round(TAIL * n))):]
    change = _col(late, "reward_mean").diff().abs().dropna()
    return {
        "reward_std_late": float(_col(late, "reward_std").mean()),
        "reward_change": float(change.mean()) if len(change) else math.nan,
        "grad_norm_sd": float(_col(late, "grad_norm").std()) if len(late) > 1 else math.nan,
        "reward_final": float(_col(tail, "reward_mean").mean()),
        "kl_final": float(_col(tail, "kl_ref").mean()),
        "drift_final": float(_col(tail, "ot_divergence").mean()),
        "mi_final": float(_col(tail, "mi_sym").mean()),
    }


def claim_outcomes(downstream: bool = False) -> list[str]:
    """The outcomes of the claim a study tests together (Holm): the benchmark gain only with --outcome-tasks."""
    return [o for o, sign in EXPECTED.items() if sign is not None and (downstream or o != "downstream_gain")]
