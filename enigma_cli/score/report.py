"""The tidy report of `enigma score-principles`: one row per set (and per principle), trusted sets first.

Ranking rule: every trusted set comes before every untrusted one (`enigma_cli.score.trust`); within each group
sets go by SI, best first, and a set whose SI is missing (NaN) comes last. A set's per-principle rows follow
it in the set's own order.
"""

from __future__ import annotations

import math

import pandas as pd


def rank(results) -> list:
    """`results` (SetScore) in report order: trusted by SI, then untrusted by SI, unscored last."""
    def key(r):
        si = r.row["si"]
        return (not r.trusted, math.isnan(si), -si if not math.isnan(si) else 0.0)

    return sorted(results, key=key)


def report_frame(results, cfg) -> pd.DataFrame:
    """Sets in `rank` order, each optionally followed by its per-principle rows."""
    rows = []
    for r in rank(results):
        rows.append({**r.row, "model": cfg.model, "seed": cfg.seed})
        if cfg.per_principle:
            rows.extend({**p, "model": cfg.model, "seed": cfg.seed} for p in r.per_principle)
    df = pd.DataFrame(rows)
    df["level"] = df["principle"].notna().map({True: "principle", False: "set"}) if "principle" in df else "set"
    lead = ["set", "level"] + (["principle"] if cfg.per_principle else [])
    tail = ["trusted", "reason"]
    return df[lead + [c for c in df.columns if c not in lead + tail] + tail]
