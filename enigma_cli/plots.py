"""PNG plots for people who would rather look than read (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .report import atomic_path

# matplotlib is imported inside `panels` and `save`: it is optional (the [plots] extra), pyplot adds ~0.4 s to
# `enigma --help`, and the Agg backend must be chosen before pyplot is imported.


def panels(n: int, *, width: float = 4.2, height: float = 3.0):
    """A figure of ``n`` panels, at most three a row (Agg backend): ``(fig, axes)``, the unused panels hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def save(fig, path: Path, title: str = "") -> Path:
    """Write ``fig`` as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def smoothed(values: pd.Series, window: int) -> pd.Series:
    """Trailing moving average over `window` points (fewer at the start), NaNs skipped: what a curve trends to."""
    return pd.to_numeric(values, errors="coerce").rolling(window, min_periods=1).mean()


def grid_plot(df: pd.DataFrame, x: str, columns: list[str], path: Path, *, hue: str | None = None,
              title: str = "", smooth: int = 0, raw: bool = True) -> Path | None:
    """One small panel per column against `x`, one line per `hue` value; written atomically. None if no columns.

    Every panel carries its own legend. With ``smooth`` > 1 each line is drawn raw (thin, faint) and as a trailing
    moving average over ``smooth`` points (bold), so noisy training curves still show their trend; ``raw=False``
    leaves the raw lines out (many lines in one panel).
    """
    columns = [c for c in columns if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()]
    if not columns:
        return None
    fig, axes = panels(len(columns))
    groups = list(df.groupby(hue, sort=False)) if hue else [(None, df)]
    smooth = smooth if smooth > 1 and len(df) > smooth else 0
    for ax, col in zip(axes, columns):
        for i, (name, part) in enumerate(groups):
            color = f"C{i % 10}"
            label = str(name) if name is not None else col
            values = pd.to_numeric(part[col], errors="coerce")
            if smooth:
                if raw:
                    ax.plot(part[x], values, color=color, linewidth=0.8, alpha=0.35, label=f"{label} (raw)")
                ax.plot(part[x], smoothed(values, smooth), color=color, linewidth=1.8,
                        label=f"{label} (mean of {smooth})")
            else:
                ax.plot(part[x], values, color=color, marker="o" if len(part) < 30 else None, markersize=3,
                        label=label)
        ax.set_title(col, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
        if pd.api.types.is_integer_dtype(df[x]):
            ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, path, title)
