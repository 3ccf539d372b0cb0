"""REPORT.md and the plots of a study: whether the claim holds here, in plain words, and how sure we can be."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..console import counted
from ..plots import grid_plot, panels, save
from ..report import atomic_path
from .outcomes import EXPECTED, LABELS

ALPHA = 0.05
NOISE_RATIO = 2.0  # set means must vary at least this much more than seed noise alone makes them vary
MIN_RHO = 0.3  # the weakest correlation that would make SI worth choosing sets by (`--min-rho`)
#: sets whose effect on an outcome is bounded below this fraction of one run's seed noise do not differ in it
NEGLIGIBLE_SET_EFFECT = 0.25
STEADY = ("reward_std_late", "reward_change", "grad_norm_sd")
GAIN = ("accuracy_gain", "majority_accuracy_gain", "downstream_gain")


def _num(row, key) -> float:
    value = row.get(key, math.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def verdict(row: pd.Series, min_rho: float = MIN_RHO) -> str:
    """One of four verdicts for an outcome of the claim (docs/method.md §9), or "no prediction" for the others:

    - *supports* / *contradicts*: ρ is significant (Holm-adjusted permutation p < α for the claim's outcomes, which
      are tested together; the bootstrap interval excludes 0 too) with the expected sign / the other;
    - *rules out*: the claim needs |ρ| ≥ `min_rho` in its direction, and the more cautious of the bootstrap and
      Fieller intervals excludes that (the text states the bound), or the sets do not differ in the outcome at all:
      the upper 95% bound of the set effect's SD is under `NEGLIGIBLE_SET_EFFECT` × the seed noise;
    - *inconclusive*, with the design's power at ρ = 0.8 where it could be computed.
    """
    rho, low, high, p = (_num(row, k) for k in ("rho", "rho_low", "rho_high", "p_perm"))
    expected = EXPECTED.get(row["outcome"])
    if math.isnan(rho) or math.isnan(p):
        return "not measurable"
    if expected is not None and math.isfinite(_num(row, "p_holm")):
        p = _num(row, "p_holm")
    significant = p < ALPHA and (low > 0 or high < 0)
    if expected is None:
        return "no prediction" + (" (significant)" if significant else "")
    if significant:
        return "supports" if rho * expected > 0 else "contradicts"
    # how far each interval reaches in the claimed direction (e·ρ); the claim needs e·ρ ≥ min_rho
    ends = (high, _num(row, "rho_high_z")) if expected > 0 else (-low, -_num(row, "rho_low_z"))
    reach = max(v for v in ends if math.isfinite(v)) if math.isfinite(ends[0]) else 1.0
    if reach < min_rho:
        return f"rules out (ρ {'<' if expected > 0 else '>'} {expected * reach:.2f})"
    set_high, noise = _num(row, "set_effect_sd_high"), _num(row, "seed_noise_sd")
    if noise > 0 and set_high < NEGLIGIBLE_SET_EFFECT * noise:
        return f"rules out (no set effect: SD ≤ {set_high:.2g})"
    power, bound = _num(row, "power_0.8"), _num(row, "power_0.8_at_bound")
    if not math.isfinite(power):
        return "inconclusive"
    at_bound = f"; at most {bound:.2f} if the sets differ as much as the data allow" if bound > power + 0.005 else ""
    return f"inconclusive (power {power:.2f} at ρ = 0.8{at_bound})"


def _range(values: pd.Series) -> str:
    low, high = float(values.min()), float(values.max())
    return f"{low:.2f}" if abs(high - low) < 0.005 else f"{low:.2f}–{high:.2f}"


def _fmt(x, spec=".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _half(verdicts: dict[str, str], outcomes: tuple[str, ...]) -> str:
    """supports / rules out / inconclusive for one half of the claim (steadiness, or gain over GRPO-only)."""
    mine = [verdicts[o] for o in outcomes if o in verdicts and verdicts[o] != "not measurable"]
    if any(v == "supports" for v in mine):
        return "supports"
    if mine and all(v.startswith("rules out") for v in mine):
        return "rules out"
    return "inconclusive" if mine else "not measured"


def overall(table: pd.DataFrame, min_rho: float = MIN_RHO) -> str:
    """The claim's verdict in one paragraph: "does not hold" only when every outcome it is about is ruled out."""
    verdicts = {r["outcome"]: verdict(r, min_rho) for _, r in table.iterrows()}
    against = [o for o, v in verdicts.items() if v == "contradicts"]
    if against:
        return ("**The claim is contradicted here**: higher SI went with " + ", ".join(LABELS[o] for o in against)
                + " in the direction opposite to the claim.")
    steady, gain = _half(verdicts, STEADY), _half(verdicts, GAIN)
    claim = [o for o in verdicts if EXPECTED.get(o) is not None and verdicts[o] != "not measurable"]
    ruled = [o for o in claim if verdicts[o].startswith("rules out")]
    if steady == "supports" and gain == "supports":
        return "**The claim holds here**: higher SI went with steadier training and a larger gain over GRPO-only."
    if "supports" in (steady, gain):
        part, other = (("steadier training", gain) if steady == "supports" else ("a larger gain over GRPO-only", steady))
        rest = {"rules out": "the other half is ruled out", "inconclusive": "the other half is inconclusive"}.get(
            other, "the other half was not measured")
        return f"**The claim holds only in part here**: higher SI went with {part}; {rest}."
    if claim and len(ruled) == len(claim):
        return (f"**The claim does not hold here**: for every outcome it is about, the data rule out a correlation "
                f"with pre-training SI of {min_rho:g} or more in the claimed direction, or show that the sets do not "
                "differ in the outcome at all.")
    mine = table[table["outcome"].isin(claim)]
    power = mine["power_0.8"].dropna() if "power_0.8" in mine else pd.Series(dtype=float)
    bound = mine["power_0.8_at_bound"].dropna() if "power_0.8_at_bound" in mine else pd.Series(dtype=float)
    had = (f" The design had a power of {_range(power)} to detect ρ = 0.8 on these outcomes at the set spread it "
           "measured (the same analysis run on simulated studies with this one's seed noise and set spread)"
           + (f", and at most {_range(bound)} had the sets differed as much as the upper bound of their spread "
              "allows" if len(bound) else "") + "." if len(power) else "")
    ratios = mine["variance_ratio"].dropna() if "variance_ratio" in mine else pd.Series(dtype=float)
    if len(power) and len(ratios) and (ratios < NOISE_RATIO).all():
        had += (" For every one of them the sets differ no more than reruns of one set do: at the spread measured "
                "no number of sets could show a correlation with SI, and more sets help only as far as the sets "
                "truly differ (up to the bound above).")
    partly = (f" Ruled out: {', '.join(LABELS.get(o, o) for o in ruled)}." if ruled else "")
    return ("**We cannot tell whether the claim holds here**: no outcome it is about correlates with pre-training SI "
            "beyond chance, and not every one is ruled out; a missed correlation is not evidence against the claim."
            + partly + had)


def power_note(n_sets: int, n_claim: int) -> str | None:
    """A sentence when too few sets make a supporting verdict impossible: Spearman's exact two-sided p cannot fall
    below 2 / n! (only the perfect order and its reverse are as extreme), and Holm multiplies the smallest p by the
    number of claim outcomes tested together."""
    if n_sets < 2 or n_claim < 1:
        return None
    floor = min(1.0, n_claim * 2 / math.factorial(n_sets))
    if floor < ALPHA:
        return None
    need = next(n for n in range(n_sets, 20) if n_claim * 2 / math.factorial(n) < ALPHA)
    return (f"With {n_sets} sets no correlation can reach p < {ALPHA} once the {n_claim} outcomes of the claim are "
            f"corrected for being tested together (the smallest possible adjusted p is {floor:.2f}), so no verdict "
            f"can support or contradict the claim; {need} sets or more can.")


def write_report(path: Path, cfg, sets: pd.DataFrame, table: pd.DataFrame, paired: pd.DataFrame,
                 equal_k: tuple[int | None, pd.DataFrame | None], timing: tuple[float, float | None, int],
                 base: pd.DataFrame) -> None:
    """`timing`: the units' own seconds summed (over every shard and resumption), this invocation's seconds (None
    for --merge) and how many units have no recorded time; `base`: `tables.versus_base`."""
    n_runs = len(sets) * len(cfg.variants) * len(cfg.seeds)
    lines = ["# Does pre-training SI predict training? (`enigma study`)", "",
             f"Model `{cfg.model}`; {len(sets)} principle sets × {counted(len(cfg.variants), 'variant')} "
             f"({', '.join(cfg.variants)}) × {counted(len(cfg.seeds), 'seed')} = {counted(n_runs, 'run')} of "
             f"{counted(cfg.steps, 'step')}; evaluation "
             f"on {cfg.eval_prompts} held-out questions × {cfg.eval_samples} samples; SI from {cfg.score_prompts} "
             f"prompts × {cfg.score_samples} samples." + _timing_text(*timing),
             "", "## Verdict", "", overall(table, cfg.min_rho), ""]
    note = power_note(len(sets), int(sum(EXPECTED.get(o) is not None for o in table["outcome"])))
    lines += [note, ""] if note else []
    lines += [("Each row: Spearman ρ of pre-training SI against the set-level outcome (the main variant, mean over "
              "seeds), a bootstrap 95% interval over sets, a permutation p-value (and, for the outcomes the claim is "
              "about, tested together, its Holm-adjusted value, on which the verdict rests), the outcome's seed "
              "noise beside its spread between sets (variance ratio ≈ 1: the sets differ no more than reruns do), "
              "the upper 95% bound of the set effect's SD (how large a difference between sets could still hide in "
              "the noise), and the design's power to detect ρ = 0.5 and 0.8. A verdict is *supports* or "
              "*contradicts* only when ρ is significant; *rules out* when the intervals exclude every ρ of "
              f"{cfg.min_rho:g} or more in the claimed direction (`--min-rho`), or the set effect's bound is under "
              f"{NEGLIGIBLE_SET_EFFECT:g} × the seed noise; otherwise *inconclusive*."), "",
              ("| outcome | ρ | 95% CI | p | p (Holm) | claim expects | verdict | seed noise SD | between-set SD | ratio "
              "| set effect SD ≤ | power at ρ 0.5 / 0.8 |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        sign = {1: "ρ > 0", -1: "ρ < 0", None: "–"}[EXPECTED.get(r["outcome"])]
        power = (f"{_fmt(r.get('power_0.5'))} / {_fmt(r.get('power_0.8'))}"
                 if math.isfinite(_num(r, "power_0.8")) else "–")
        lines.append(f"| {LABELS.get(r['outcome'], r['outcome'])} | {_fmt(r['rho'])} | {_fmt(r['rho_low'])}.."
                     f"{_fmt(r['rho_high'])} | {_fmt(r['p_perm'], '.3f')} | {_fmt(r.get('p_holm'), '.3f')} | {sign} | "
                     f"{verdict(r, cfg.min_rho)} | "
                     f"{_fmt(r.get('seed_noise_sd'), '.3g')} | {_fmt(r.get('between_set_sd'), '.3g')} | "
                     f"{_fmt(r.get('variance_ratio'), '.1f')} | {_fmt(_num(r, 'set_effect_sd_high'), '.3g')} | "
                     f"{power} |")
    noisy = [LABELS.get(r["outcome"], r["outcome"]) for _, r in table.iterrows()
             if r.get("variance_ratio", math.nan) < NOISE_RATIO]
    if noisy:
        lines += ["", (f"Seed noise is as large as the differences between sets for: {', '.join(noisy)}. With "
                  f"{len(sets)} sets, a correlation on these outcomes mostly measures which seeds were drawn.")]
    k_note, subset = equal_k
    if sets["k"].nunique() > 1:
        same_k = (f"the {len(subset)} sets with K = {k_note} alone give the same table in `correlations.csv` (rows "
                  f"`k = {k_note}`)." if k_note is not None and subset is not None else
                  "no K is shared by 3 sets or more, so there is no table at equal K.")
        lines += ["", (f"The sets have different K ({', '.join(map(str, sorted(sets['k'].unique())))}). SI = "
                       "Î_sym / log K puts them on one scale, and every run trains with 2 principles per prompt, so "
                       f"the budgets are equal; {same_k}")]
    lines += _trust_notes(sets)
    lines += _base_lines(base)
    lines += ["", "## ENIGMA against GRPO-only, whatever the SI", ""]
    if len(paired):
        lines += ["Paired by set and seed (mean difference ENIGMA − GRPO-only, wins/losses, Wilcoxon signed-rank).", "",
                  "| outcome | pairs | mean difference | ENIGMA higher | lower | p |", "|---|---|---|---|---|---|"]
        for _, r in paired.iterrows():
            lines.append(f"| {LABELS.get(r['outcome'], r['outcome'])} | {r['pairs']} | {_fmt(r['mean_diff'], '+.4f')} "
                         f"| {r['wins']} | {r['losses']} | {_fmt(r['p_wilcoxon'], '.4f')} |")
    else:
        lines.append("Not measured: the study did not run both the enigma and grpo variants.")
    lines += ["", "## Sets", "", "| set | K | SI (95% CI) | accuracy | gain over GRPO-only | KL | post-training SI |",
              "|---|---|---|---|---|---|---|"]
    for _, r in sets.iterrows():
        lines.append(f"| {r['set']} | {r['k']} | {_fmt(r['si'], '.3f')} ({_fmt(r.get('pre_si_low'), '.3f')}.."
                     f"{_fmt(r.get('pre_si_high'), '.3f')}) | {_fmt(r.get('accuracy'))} | "
                     f"{_fmt(r.get('accuracy_gain'), '+.3f')} | {_fmt(r.get('kl_final'), '.3f')} | "
                     f"{_fmt(r.get('post_si'), '.3f')} |")
    lines += ["", ("Files: `study.csv` (one row per set), `runs.csv` (one row per run), `correlations.csv`, "
              "`paired.csv`, `si_vs_outcomes.png`, `training_curves.png`; each run's own folder is under `runs/`."), ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def _base_lines(base: pd.DataFrame) -> list[str]:
    """The base model beside each variant, and a plain sentence when training lowered the answers' accuracy."""
    lines = ["", "## Against the base model", "", ("Held-out questions without a principle in the prompt; the base row is "
             "the model before training, each variant's row the mean over its runs."), "",
             "| model | runs | format rate | accuracy@1 | majority-vote accuracy |", "|---|---|---|---|---|"]
    for _, r in base.iterrows():
        lines.append(f"| {r['model']} | {r['runs'] or '–'} | {_fmt(r['format_rate'])} | {_fmt(r['accuracy'])} | "
                     f"{_fmt(r['majority_accuracy'])} |")
    before, after = base.iloc[0], base.iloc[1:]
    se = (before["se"] ** 2 + after["se"].fillna(before["se"]) ** 2) ** 0.5  # one run: its error is the base's
    drop = before["accuracy"] - after["accuracy"]
    if len(after) and (drop > 2 * se).all():
        lines += ["", (f"Every variant ends below the base model's accuracy ({_fmt(before['accuracy'])}) by more than "
                       "twice the standard error of the difference ("
                       f"{', '.join(f'{m} −{_fmt(d)} ± {_fmt(e)}' for m, d, e in zip(after['model'], drop, se))}): here "
                       "training bought the format reward with correct answers, and a gain over GRPO-only means "
                       "losing less, not improving.")]
    elif len(after) and (drop > 0).all():
        lines += ["", ("Every variant's accuracy is below the base model's, but not by more than twice the standard "
                       f"error of the difference (up to ±{_fmt(float(se.max()))}, from the number of held-out "
                       "questions and the spread of the runs): the study is too small to say whether training cost "
                       "accuracy.")]
    return lines


def _timing_text(units: float, invocation: float | None, untimed: int = 0) -> str:
    parts = []
    if units:
        missing = f"; {counted(untimed, 'unit')} written without a time not counted" if untimed else ""
        parts.append(f"the units took {units / 60:.0f} min in all (each unit's own time, summed over shards and "
                     f"resumptions; a unit's time before an interruption is not counted{missing})")
    if invocation is not None and (not units or abs(invocation - units) > 60):
        parts.append(f"this invocation took {invocation / 60:.0f} min")
    text = "; ".join(parts)
    return f" {text[0].upper()}{text[1:]}." if text else ""


def _trust_notes(sets: pd.DataFrame) -> list[str]:
    """The sets whose pre-training SI is not trusted, and the caveats of trusted ones (`score.trust`: saturation
    does not block). Results written before `pre_trusted` was kept count every reason as untrusted."""
    if "pre_reason" not in sets:
        return []
    reason = sets["pre_reason"].fillna("").astype(str)
    trusted = sets["pre_trusted"] if "pre_trusted" in sets else pd.Series(False, index=sets.index)
    trusted = trusted.fillna(False).astype(bool)
    lines = []
    for label, rows in (("SI could not be trusted for: ", sets[(reason != "") & ~trusted]),
                        ("SI is trusted, with a caveat, for: ", sets[(reason != "") & trusted])):
        if len(rows):
            lines += ["", label + "; ".join(f"{r['set']} ({r['pre_reason']})" for _, r in rows.iterrows()) + "."]
    return lines


def plot_si_vs_outcomes(sets: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path | None:
    outcomes = [o for o in table["outcome"] if o in sets and sets[o].notna().any()]
    if not outcomes:
        return None

    fig, axes = panels(len(outcomes), width=4.4, height=3.4)
    xerr = None
    if {"pre_si_low", "pre_si_high"} <= set(sets):
        xerr = [(sets["si"] - sets["pre_si_low"]).clip(lower=0), (sets["pre_si_high"] - sets["si"]).clip(lower=0)]
    stats = table.set_index("outcome")
    for ax, outcome in zip(axes, outcomes):
        yerr = sets.get(f"{outcome}_sd")
        ax.errorbar(sets["si"], sets[outcome], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label="set (mean ± SD)")
        for _, r in sets.iterrows():
            ax.annotate(str(r["set"]), (r["si"], r[outcome]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        s = stats.loc[outcome]
        ax.set_title(f"{LABELS.get(outcome, outcome)}\nρ = {_fmt(s['rho'])}, p = {_fmt(s['p_perm'], '.3f')}",
                     fontsize=9)
        ax.set_xlabel("SI before training", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return save(fig, path, "pre-training SI against what training did")


def plot_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    """Mean over seeds of each set's training curves (reward and KL), one line per set and variant."""
    if curves.empty:
        return None

    frame = curves.groupby(["run", "step"], as_index=False)[["reward_mean", "kl_ref", "mi_sym"]].mean()
    return grid_plot(frame, "step", ["reward_mean", "kl_ref", "mi_sym"], path, hue="run",
                     title="training curves per set (mean over seeds, trailing mean of 5 steps)", smooth=5, raw=False)
