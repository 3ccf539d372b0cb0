"""`enigma analyze-manifold`: per-layer information geometry of trained checkpoints against their base.

The CLI layer only: validate without loading weights, call `enigma_cli.manifold.analyze`, print and write. The
metrics and their choices are documented in `enigma_cli/manifold/analysis.py`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich import box
from rich.table import Table

from .. import manifold
from ..cli_options import command
from ..console import console
from ..context import ContextCheck, principles_of
from ..datasets import load_examples
from ..errors import InputError
from ..manifold import ManifoldConfig
from ..models.loading import resolve_device, resolve_dtype
from ..options import write_resolved
from ..plots import grid_plot
from ..principles import load_principle_set
from ..report import check_format, write_table


def run(cfg: ManifoldConfig, dry_run: bool) -> None:
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
    check_format(cfg.format, out_dir, "--out-dir")
    pset = load_principle_set(cfg.principles)
    examples = load_examples(cfg.dataset, n=cfg.prompts, seed=cfg.seed, question_column=cfg.question_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset} has no prompts.")
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    # every model reads the base's prompts + completions: each must take them (its files are checked here too)
    check = ContextCheck(principles_of(pset), cfg.max_new_tokens, rows=f"dataset {cfg.dataset}")
    examples = [examples[i] for i in check.before_load([cfg.base, *cfg.trained], [ex.prompt_text for ex in examples])]
    base_shape = manifold.ModelShape.peek(cfg.base)  # local checkpoints: depth, width, tokenizer from disk
    depth = None
    if base_shape is not None:
        depth = base_shape.num_layers
        manifold.analysed_layers(cfg.layers, depth)
        for spec in cfg.trained:
            shape = manifold.ModelShape.peek(spec)
            if shape is not None:
                manifold.check_compatible(base_shape, shape)

    questions = [ex.prompt_text for ex in examples]
    comp_path = out_dir / manifold.COMPLETIONS_FILE if out_dir is not None else None
    if dry_run:
        _print_plan(manifold, cfg, pset, questions, comp_path, depth)
        return

    rows, info = manifold.analyze(cfg, pset, questions, completions_path=comp_path,
                                  log=lambda msg: console.print(msg, highlight=False),
                                  fit=lambda lm, qs: [qs[i] for i in check.loaded(lm, qs)])
    df = pd.DataFrame(rows, columns=list(manifold.COLUMNS))
    _print_summary(df)

    if out_dir is None:
        write_table(df, None, cfg.format)
        return

    table = out_dir / f"manifold.{cfg.format}"
    write_table(df, table, cfg.format)
    short = short_names(df["model"].astype(str))
    png = grid_plot(df.assign(model=df["model"].astype(str).map(short)), "layer", list(manifold.PLOT_METRICS),
                    out_dir / "manifold.png", hue="model",
                    title=f"{pset.name}: {info['completions']} completions, {info['tokens']} sampled tokens")
    write_resolved(cfg, out_dir / "config.yaml")
    console.print(f"wrote {table}" + (f", {png}" if png else "") + f", {out_dir / 'config.yaml'} and "
                  f"{comp_path} ({'reused' if info['reused'] else 'generated'})", highlight=False)


def _print_plan(manifold, cfg, pset, questions, comp_path, depth) -> None:
    n_comp = len(questions) * pset.k * cfg.samples
    reuse = ""
    if comp_path is not None and cfg.reuse and comp_path.is_file():
        key = manifold.completions_key(manifold.base_identity(cfg.base), pset.name,
                                       [(p.id, p.text) for p in pset.principles], questions, cfg)
        found = manifold.load_completions(comp_path, key, pset.ids) is not None
        verdict = "matches and will be reused" if found else "does not match and will be replaced"
        reuse = f" ({comp_path} {verdict})"
    n_layers = len(manifold.analysed_layers(cfg.layers, depth)) if depth is not None else "?"
    console.print(f"set {pset.name} (K={pset.k}); {len(questions)} questions × {pset.k} principles × "
                  f"{cfg.samples} samples = {n_comp} completions (≤{cfg.max_new_tokens} tokens each), "
                  f"written once by {cfg.base}{reuse}.", highlight=False)
    console.print(f"{1 + len(cfg.trained)} models read them ({cfg.base}, {', '.join(cfg.trained)}); "
                  f"{n_layers} layers ({cfg.layers}) of depth {depth if depth is not None else '?'}; "
                  f"≤{cfg.tokens} sampled tokens per model; probe with {cfg.folds}-fold grouped CV.",
                  highlight=False)
    console.print("nothing loaded (--dry-run).")


def _fmt(value, spec=".3f") -> str:
    missing = value is None or (isinstance(value, float) and not math.isfinite(value))
    return "–" if missing else format(value, spec)


def short_names(names) -> dict[str, str]:
    """The shortest trailing path of each model that still tells it apart ('grpo/checkpoint-50')."""
    names = list(dict.fromkeys(names))
    parts = {n: Path(n).parts or (n,) for n in names}
    out = {}
    for n in names:
        for depth in range(1, len(parts[n]) + 1):
            tail = parts[n][-depth:]
            if sum(parts[o][-depth:] == tail for o in names) == 1:
                break
        out[n] = "/".join(tail)
    return out


def _print_summary(df) -> None:
    """One line per model: the numbers a person looks at first (L = last layer; '(n)' = at layer n)."""
    base = str(df.loc[df["role"] == "base", "model"].iloc[0])
    short = short_names(df["model"].astype(str))
    table = Table(title=f"against the base {short[str(base)]} (L = last layer; (n) = at layer n)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    width = min(24, max(len(v) for v in short.values()))
    table.add_column("model", min_width=width, overflow="fold")
    for col in ("drift@L", "CKA min", "angle@L", "FR", "KL", "probe best", "MI@L"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, part in df.groupby("model", sort=False):
        last = part.loc[part["layer"].idxmax()]
        final = part.dropna(subset=["fisher_rao"])
        cka = part.dropna(subset=["cka"])
        probe = part.dropna(subset=["probe_acc"])
        min_cka = cka.loc[cka["cka"].idxmin()] if len(cka) else None
        best = probe.loc[probe["probe_acc"].idxmax()] if len(probe) else None
        table.add_row(
            short[str(name)], _fmt(last["sinkhorn_drift"], ".1e"),
            f"{_fmt(min_cka['cka'])} ({int(min_cka['layer'])})" if min_cka is not None else "–",
            _fmt(last["angle_mean"], ".2f"), _fmt(final["fisher_rao"].iloc[0] if len(final) else None, ".1e"),
            _fmt(final["kl"].iloc[0] if len(final) else None, ".1e"),
            f"{_fmt(best['probe_acc'], '.2f')} ({int(best['layer'])})" if best is not None else "–",
            _fmt(last["infonce_mi"], ".2f"),
        )
    console.print(table)


analyze_manifold = command(
    ManifoldConfig, "analyze-manifold", run,
    help="Compare trained checkpoints with their base layer by layer: drift, CKA, angles, dimension, decoding.")
