"""PNG plots for people who would rather look than read (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def grid_plot(df: pd.DataFrame, x: str, columns: list[str], path: Path, *, hue: str | None = None,
              title: str = "") -> Path | None:
    """One small panel per column against `x`, one line per `hue` value; written atomically. None if no columns."""
    columns = [c for c in columns if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()]
    if not columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import atomic_path

    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    groups = list(df.groupby(hue, sort=False)) if hue else [(None, df)]
    for ax, col in zip(axes.flat, columns):
        for name, part in groups:
            ax.plot(part[x], pd.to_numeric(part[col], errors="coerce"), marker="o" if len(part) < 30 else None,
                    markersize=3, label=str(name) if name is not None else None)
        ax.set_title(col, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if pd.api.types.is_integer_dtype(df[x]):
            ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    if hue and len(groups) > 1:
        axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
