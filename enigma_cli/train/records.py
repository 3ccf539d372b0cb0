"""Where `enigma train` writes: the metrics CSV (one row per step), the completions dump, the curves PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

CURVES = ["reward_mean", "format_rate", "accuracy", "loss_grpo", "loss_sami", "mi_sym", "si", "ot_divergence",
          "kl_ref", "grad_norm", "completion_len_mean", "gen_tokens_per_s"]


class MetricsLog:
    """Appends rows to `metrics.csv`; on resume keeps only the rows up to the checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.rows: list[dict] = []
        if resume_step is not None and self.path.exists():
            old = pd.read_csv(self.path)
            self.rows = old[old["step"] <= resume_step].to_dict("records")
        self._columns: list[str] | None = None
        self._rewrite()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self._columns is None or set(row) - set(self._columns):
            self._rewrite()  # a new column appeared (first row, or a term that starts later): rewrite the file
        else:
            pd.DataFrame([row], columns=self._columns).to_csv(self.path, mode="a", header=False, index=False,
                                                              float_format="%.6g")

    def _rewrite(self) -> None:
        from ..report import write_table

        if not self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(self.rows)
        self._columns = list(df.columns) if len(df.columns) else None
        write_table(df, self.path, "csv")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def dump_completions(path: Path, step: int, ep) -> None:
    """Append this step's completions (one JSON object per line) to the dump."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for i, text in enumerate(ep.texts):
            p = i // ep.group_size
            fh.write(json.dumps({
                "step": step, "prompt": p, "question": ep.questions[p], "principle": ep.principle_ids[i],
                "completion": text, "answer": ep.rewards.answers[i], "label": ep.labels[i],
                "reward": round(float(ep.rewards.total[i]), 6), "advantage": round(float(ep.advantages[i]), 6),
            }) + "\n")


def truncate_dump(path: Path, step: int) -> None:
    """On resume, drop dumped completions of steps after the checkpoint."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))
