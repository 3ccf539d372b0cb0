"""Where `enigma train` writes: the metrics CSV (one row per step), the completions dump, the curves PNG.

Both logs grow by appends, one ``os.write`` per step in ``O_APPEND`` mode, so a kill leaves at worst a torn last
line. Whenever a run starts or resumes, the logs are rewritten atomically (temporary file, then rename) with the
whole lines of the steps up to its checkpoint only: a torn line, or the lines of steps after the checkpoint,
never survive into the continued run.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd

from ..report import atomic_path, write_table, writing

CURVES = ["reward_mean", "format_rate", "accuracy", "loss_grpo", "loss_sami", "mi_sym", "si", "ot_divergence",
          "kl_ref", "grad_norm", "completion_len_mean", "gen_tokens_per_s"]


def append_text(path: Path, text: str) -> None:
    """Append `text` with one write call (O_APPEND), so that concurrent or killed writers cannot interleave
    within it; an OSError (disk full) becomes one sentence naming the file."""
    data = text.encode("utf-8")
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            view = memoryview(data)
            while view:  # a regular file takes it all at once; loop for the odd short write
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def whole_lines(path: Path) -> list[str]:
    """The file's complete lines (a last line without its newline was torn by a kill and is dropped)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    return lines[:-1]  # after the last "\n" comes "" (whole file) or a torn line


def rewrite_lines(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


class MetricsLog:
    """Appends rows to `metrics.csv`; on resume keeps only the rows up to the checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.rows: list[dict] = []
        if resume_step is not None:
            lines = whole_lines(self.path)
            if len(lines) > 1:
                old = pd.read_csv(io.StringIO("\n".join(lines) + "\n"))
                self.rows = old[old["step"] <= resume_step].to_dict("records")
        self._columns: list[str] | None = None
        self._rewrite()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self._columns is None or set(row) - set(self._columns):
            self._rewrite()  # a new column appeared (first row, or a term that starts later): rewrite the file
        else:
            line = pd.DataFrame([row], columns=self._columns).to_csv(header=False, index=False, float_format="%.6g")
            append_text(self.path, line)

    def _rewrite(self) -> None:
        if not self.rows:
            self.path.unlink(missing_ok=True)  # a restart from step 0: the old rows are not this run's
            return
        df = pd.DataFrame(self.rows)
        self._columns = list(df.columns) if len(df.columns) else None
        write_table(df, self.path, "csv")

    def frame(self):
        return pd.DataFrame(self.rows)


def completion_records(step: int, ep, rank: int = 0) -> list[dict]:
    """This step's completions on this rank, one JSON-ready record each (``prompt`` counts within the rank)."""
    records = []
    for i, text in enumerate(ep.texts):
        p = i // ep.group_size
        records.append({
            "step": step, "rank": rank, "prompt": p, "question": ep.questions[p], "principle": ep.principle_ids[i],
            "completion": text, "answer": ep.rewards.answers[i], "label": ep.labels[i],
            "reward": round(float(ep.rewards.total[i]), 6), "advantage": round(float(ep.advantages[i]), 6),
        })
    return records


def dump_completions(path: Path, records: list[dict]) -> None:
    """Append records (one JSON object per line) to the dump, in one write."""
    append_text(path, "".join(json.dumps(r) + "\n" for r in records))


def truncate_dump(path: Path, step: int) -> None:
    """On resume, keep the dumped completions of steps up to the checkpoint's (atomically; torn lines dropped);
    a start from step 0 (`step` 0) removes the dump."""
    if step <= 0:
        Path(path).unlink(missing_ok=True)
        return
    if not Path(path).exists():
        return
    keep = []
    for line in whole_lines(Path(path)):
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # not a whole record of ours
    rewrite_lines(Path(path), keep)
