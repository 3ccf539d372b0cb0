"""Plots: every panel has a legend, smoothed curves sit beside the raw ones, and the title names the run."""

from __future__ import annotations

import pandas as pd
import pytest

from enigma_cli.plots import grid_plot, smoothed


def test_smoothed_is_a_trailing_mean_that_skips_gaps():
    s = pd.Series([1.0, 3.0, float("nan"), 5.0, 7.0])
    assert smoothed(s, 2).tolist() == pytest.approx([1.0, 2.0, 3.0, 5.0, 6.0])


def test_panels_have_legends_and_smoothed_lines(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    captured = {}
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: captured.setdefault("fig", fig) and real_close(fig))
    df = pd.DataFrame({"step": range(1, 41), "reward_mean": [i % 5 for i in range(40)],
                       "kl_ref": [0.01 * i for i in range(40)]})
    path = grid_plot(df, "step", ["reward_mean", "kl_ref", "absent"], tmp_path / "c.png", title="run-a: enigma",
                     smooth=5)
    assert path.is_file() and path.stat().st_size > 1000
    fig = captured["fig"]
    assert fig._suptitle.get_text() == "run-a: enigma"
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["reward_mean", "kl_ref"]
    for ax in panels:
        assert ax.get_legend() is not None
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("raw" in t for t in labels) and any("mean of 5" in t for t in labels)
        raw, smooth = ax.get_lines()
        assert list(smooth.get_ydata()) == pytest.approx(smoothed(pd.Series(raw.get_ydata()), 5).tolist())


def test_hue_gives_one_labelled_line_per_model(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    captured = {}
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: captured.setdefault("fig", fig) and real_close(fig))
    df = pd.DataFrame({"layer": [0, 1, 0, 1], "cka": [1.0, 0.9, 1.0, 0.7], "model": ["base", "base", "x", "x"]})
    grid_plot(df, "layer", ["cka"], tmp_path / "m.png", hue="model")
    ax = next(a for a in captured["fig"].axes if a.get_title())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "x"]
