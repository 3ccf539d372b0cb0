"""The tidy report of `enigma score-principles`: one row per set (and per principle), ranked by SI."""

from __future__ import annotations

import pandas as pd


def report_frame(results, cfg) -> pd.DataFrame:
    """Sets ranked by SI (best first), each optionally followed by its per-principle rows."""
    rows = []
    for r in results:
        rows.append({**r.row, "model": cfg.model, "seed": cfg.seed})
        if cfg.per_principle:
            rows.extend({**p, "model": cfg.model, "seed": cfg.seed} for p in r.per_principle)
    df = pd.DataFrame(rows)
    df["level"] = df["principle"].notna().map({True: "principle", False: "set"}) if "principle" in df else "set"
    order = {r.name: rank for rank, r in enumerate(sorted(results, key=lambda r: -r.row["si"]))}
    df = (df.assign(_rank=df["set"].map(order), _lvl=(df["level"] == "principle").astype(int))
          .sort_values(["_rank", "_lvl"], kind="stable").drop(columns=["_rank", "_lvl"]))
    lead = ["set", "level"] + (["principle"] if cfg.per_principle else [])
    return df[lead + [c for c in df.columns if c not in lead]]
