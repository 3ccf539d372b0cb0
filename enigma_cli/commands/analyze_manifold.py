"""`enigma analyze-manifold`: per-layer information geometry of trained checkpoints against their base.

The CLI layer only: parse, validate without loading weights, call `enigma_cli.manifold.analyze`, print and
write.
The metrics and their choices are documented in `enigma_cli/manifold.py` (method.md §6).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from .. import config as cfgmod
from ..console import console
from ..errors import InputError
from ..report import FORMATS


@dataclass(frozen=True)
class ManifoldConfig:
    base: str = "enigma-tiny"
    trained: tuple[str, ...] = ()
    principles: str | None = None
    dataset: str | None = None
    question_column: str | None = None
    prompts: int = 32
    samples: int = 2
    max_new_tokens: int = 96
    temperature: float = 1.0
    layers: str = "all"
    tokens: int = 1024
    eps: float = 0.05
    pca_k: int = 8
    folds: int = 5
    batch_size: int = 16
    gen_batch_size: int = 64
    reuse: bool = True
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self):
        trained = (self.trained,) if isinstance(self.trained, str) else tuple(self.trained or ())
        object.__setattr__(self, "trained", tuple(str(t) for t in trained))
        layers = self.layers
        if isinstance(layers, (list, tuple)):  # a config file may list the layers
            layers = ",".join(str(x) for x in layers)
        object.__setattr__(self, "layers", str(layers))
        if not self.trained:
            raise InputError("give at least one --trained checkpoint to compare with the base model.")
        positive = ("prompts", "samples", "max_new_tokens", "tokens", "pca_k", "batch_size", "gen_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.folds < 2:
            raise InputError(f"--folds must be at least 2, not {self.folds}.")
        if self.temperature < 0:
            raise InputError(f"--temperature must be >= 0, not {self.temperature}.")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise InputError(f"--eps must be a positive number, not {self.eps}.")


_MODEL_FORMS = "enigma-tiny, smollm2, a save_pretrained folder, a LoRA adapter folder or a hub id"


def analyze_manifold(
    ctx: typer.Context,
    base: Annotated[str, typer.Option(help=f"Base model: {_MODEL_FORMS}.")] = "enigma-tiny",
    trained: Annotated[list[str] | None, typer.Option(
        help="A trained checkpoint (same forms as --base); repeat for several.", show_default=False)] = None,
    principles: Annotated[str | None, typer.Option(
        help="Principle set: a shipped name or a YAML file (default: stepwise-vs-oneline).",
        show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Questions: 'synthetic' (built-in held-out problems), a JSONL/CSV/parquet file, or a hub id.")
    ] = None,
    question_column: Annotated[str | None, typer.Option(help="Column holding the question.")] = None,
    prompts: Annotated[int, typer.Option(help="Questions (N).")] = 32,
    samples: Annotated[int, typer.Option(help="Completions per question and principle.")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion, in tokens.")] = 96,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the base (0 = greedy).")] = 1.0,
    layers: Annotated[str, typer.Option(help="'all' (hidden states 0..L) or a list such as 0,6,-1.")] = "all",
    tokens: Annotated[int, typer.Option(
        help="Completion tokens sampled for TwoNN, token effective rank, Fisher-Rao and KL.")] = 1024,
    eps: Annotated[float, typer.Option(help="Sinkhorn ε on L2-normalised pooled states.")] = 0.05,
    pca_k: Annotated[int, typer.Option(help="Dimension of the PCA subspaces compared by principal angles.")
                     ] = 8,
    folds: Annotated[int, typer.Option(help="Cross-validation folds of the principle probe.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass when reading (full logits).")
                          ] = 16,
    gen_batch_size: Annotated[int, typer.Option(help="Sequences per generate call.")] = 64,
    reuse: Annotated[bool, typer.Option(
        "--reuse/--regenerate", help="Reuse OUT_DIR/completions.jsonl when it matches the config.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of questions, sampling, token subsample and probe folds.")
                    ] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16 (states are kept in fp32).")
                     ] = "auto",
    out_dir: Annotated[Path | None, typer.Option(
        help="Write manifold.<format>, manifold.png, config.yaml and completions.jsonl here "
             "(default: the table to stdout, nothing saved).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or parquet.")] = "csv",
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file of options; typed flags win.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; load no weights.")
                       ] = False,
) -> None:
    """Compare trained checkpoints with their base layer by layer: drift, CKA, angles, dimension, decoding."""
    cfg = cfgmod.resolve(
        ManifoldConfig, ctx, config, base=base, trained=tuple(trained or ()), principles=principles,
        dataset=dataset, question_column=question_column, prompts=prompts, samples=samples,
        max_new_tokens=max_new_tokens, temperature=temperature, layers=layers, tokens=tokens, eps=eps,
        pca_k=pca_k, folds=folds, batch_size=batch_size, gen_batch_size=gen_batch_size, reuse=reuse,
        seed=seed, device=device, dtype=dtype,
    )
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    if fmt == "parquet" and out_dir is None:
        raise InputError("--format parquet needs --out-dir (parquet is binary and cannot go to stdout).")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} exists and is not a folder.")

    from .. import manifold
    from ..datasets import load_examples
    from ..models.loading import model_path_for, resolve_device, resolve_dtype
    from ..principles import load_principle_set

    # Validate everything that can be checked without loading weights.
    cfg = dataclasses.replace(cfg, principles=cfg.principles or manifold.default_principle_set(),
                              dataset=cfg.dataset or "synthetic")
    pset = load_principle_set(cfg.principles)
    examples = load_examples(cfg.dataset, n=cfg.prompts, seed=cfg.seed, question_column=cfg.question_column)
    if not examples:
        raise InputError(f"dataset {cfg.dataset} has no prompts.")
    manifold.parse_layers(cfg.layers)
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    for spec in (cfg.base, *cfg.trained):
        model_path_for(spec)  # a missing folder or a bad spec fails here
    base_shape = manifold.ModelShape.peek(cfg.base)  # local checkpoints: depth, width, tokenizer from disk
    depth = None
    if base_shape is not None:
        depth = base_shape.num_layers
        manifold.resolve_layers(cfg.layers, depth)
        for spec in cfg.trained:
            shape = manifold.ModelShape.peek(spec)
            if shape is not None:
                manifold.check_compatible(base_shape, shape)

    settings = manifold.ManifoldSettings(
        samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        batch_size=cfg.batch_size, gen_batch_size=cfg.gen_batch_size, seed=cfg.seed, tokens=cfg.tokens,
        eps=cfg.eps, pca_k=cfg.pca_k, folds=cfg.folds,
    )
    questions = [ex.question for ex in examples]
    comp_path = out_dir / manifold.COMPLETIONS_FILE if out_dir is not None else None
    if dry_run:
        _print_plan(manifold, cfg, pset, questions, settings, comp_path, depth)
        return

    import pandas as pd

    rows, info = manifold.analyze(
        cfg.base, cfg.trained, pset, questions, settings, layers=cfg.layers, device=cfg.device,
        dtype=cfg.dtype, completions_path=comp_path, reuse=cfg.reuse,
        log=lambda msg: console.print(msg, highlight=False),
    )
    df = pd.DataFrame(rows, columns=list(manifold.COLUMNS))
    _print_summary(df)
    from ..report import write_table

    if out_dir is None:
        write_table(df, None, fmt)
        return
    from ..plots import grid_plot

    table = out_dir / f"manifold.{fmt}"
    write_table(df, table, fmt)
    short = short_names(df["model"].astype(str))
    png = grid_plot(df.assign(model=df["model"].astype(str).map(short)), "layer", list(manifold.PLOT_METRICS),
                    out_dir / "manifold.png", hue="model",
                    title=f"{pset.name}: {info['completions']} completions, {info['tokens']} sampled tokens")
    cfgmod.write_resolved(cfg, out_dir / "config.yaml")
    console.print(f"wrote {table}" + (f", {png}" if png else "") + f", {out_dir / 'config.yaml'} and "
                  f"{comp_path} ({'reused' if info['reused'] else 'generated'})", highlight=False)


def _print_plan(manifold, cfg, pset, questions, settings, comp_path, depth) -> None:
    n_comp = len(questions) * pset.k * cfg.samples
    reuse = ""
    if comp_path is not None and cfg.reuse and comp_path.is_file():
        key = manifold.completions_key(manifold.base_identity(cfg.base), pset.name,
                                       [(p.id, p.text) for p in pset.principles], questions, settings)
        found = manifold.load_completions(comp_path, key, pset.ids) is not None
        verdict = "matches and will be reused" if found else "does not match and will be replaced"
        reuse = f" ({comp_path} {verdict})"
    n_layers = len(manifold.resolve_layers(cfg.layers, depth)) if depth is not None else "?"
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
    from rich import box
    from rich.table import Table

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
