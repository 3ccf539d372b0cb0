"""The last stage of `enigma study` (what `--merge` runs): from a folder whose units are all done to its tables,
plots and REPORT.md. The statistics themselves are `analysis`, the tables `tables`, the words `report`."""

from __future__ import annotations

import pandas as pd

from ..console import console
from ..errors import InputError
from ..report import write_table
from .plan import read_result
from .report import overall, plot_curves, plot_si_vs_outcomes, write_report
from .tables import correlation_table, equal_k_subset, paired_table, runs_table, sets_table, versus_base


def _curves(inputs, run_units) -> pd.DataFrame:
    frames = []
    for unit in run_units:
        path = unit.folder(inputs.root) / "metrics.csv"
        if path.is_file():
            df = pd.read_csv(path)
            cols = [c for c in ("step", "reward_mean", "kl_ref", "mi_sym") if c in df]
            frames.append(df[cols].assign(run=f"{unit.set}/{unit.variant}"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def analyze(cfg, inputs, *, seconds: float | None = None) -> pd.DataFrame:
    results = {u: read_result(u, inputs.root) for u in inputs.units}
    missing = [u for u, r in results.items() if r is None]
    if missing:
        raise InputError(f"{len(missing)} of {len(results)} units of the study in {inputs.root} are not done (e.g. "
                         f"{missing[0].name}); run the same command without --merge, or finish the missing shards.")
    scores = [r for u, r in results.items() if u.kind == "score"]
    run_units = [u for u in results if u.kind == "run"]
    runs = runs_table([results[u] for u in run_units])
    sets = sets_table(scores, runs, main=cfg.variants[0])
    table = correlation_table(sets, runs, seed=cfg.seed, main=cfg.variants[0]).assign(k="all")
    k, subset = equal_k_subset(sets)
    if k is not None and len(subset) >= 3:
        same_k = correlation_table(subset, runs[runs["set"].isin(subset["set"])], seed=cfg.seed,
                                   main=cfg.variants[0]).assign(k=str(k))
        all_rows = pd.concat([table, same_k], ignore_index=True)
    else:  # fewer than 3 sets share a K: no equal-K rows, and REPORT.md must not point at them
        all_rows, k = table, None
    paired = paired_table(runs)
    root = inputs.root
    write_table(runs, root / "runs.csv")
    write_table(sets, root / "study.csv")
    write_table(all_rows, root / "correlations.csv")
    if len(paired):
        write_table(paired, root / "paired.csv")
    plot_si_vs_outcomes(sets, table, root / "si_vs_outcomes.png")
    plot_curves(_curves(inputs, run_units), root / "training_curves.png")
    timed = [r.get("unit_seconds", r.get("seconds")) for r in results.values()]
    units_time = sum(t for t in timed if t is not None)
    write_report(root / "REPORT.md", cfg, sets, table, paired, (k, subset if k is not None else None),
                 (units_time, seconds, sum(t is None for t in timed)), versus_base(sets, runs, len(inputs.eval_examples)))
    console.print(overall(table).replace("**", ""), highlight=False)
    console.print(f"wrote {root / 'REPORT.md'}, study.csv, runs.csv, correlations.csv and the plots.", highlight=False)
    return sets
