"""`ScoreConfig`: every option of `enigma score-principles` (the single source of its flags)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import require
from ..options import Options, device_opt, dtype_opt, opt
from ..report import FORMATS

CRITICS = ("mean", "sum")  # the critic of the main SI columns (enigma_cli.score.scoring)
SATURATION = 0.95  # mi_sym at this fraction of log K is saturated (enigma_cli.score.trust)


@dataclass(frozen=True)
class ScoreConfig(Options):
    principles: tuple[str, ...] = opt((), "Principle sets: shipped names or YAML files (default: every shipped "
                                          "set).", argument=True, metavar="SETS")
    model: str = opt("enigma-tiny", "enigma-tiny, smollm2, a local model folder, a run folder or a hub id.")
    dataset: str = opt("synthetic", "Prompts: 'synthetic' (built-in held-out problems), a JSONL/CSV/parquet "
                                    "file, or a hub id.")
    question_column: str | None = opt(None, "Column holding the question.")
    answer_column: str | None = opt(None, "Column holding the answer.")
    prompts: int = opt(24, "Prompts per set (N).", ge=1)
    samples: int = opt(4, "Completions per principle and prompt (M).", ge=1)
    max_new_tokens: int = opt(96, "Longest completion, in tokens.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature (0 = greedy).", ge=0)
    batch_size: int = opt(64, "Sequences per forward pass.", ge=1)
    critic: str = opt("sum", "Critic of the main SI columns: 'sum' (the completion's log-likelihood, centred on "
                             "the principles' mixture; its column softmax is the posterior over principles) or "
                             "'mean' (SAMI's mean token log-prob); the CSV reports both.", choices=CRITICS)
    min_format_rate: float = opt(0.5, "Below this rate of <reasoning>/<answer> completions a row is not trusted.",
                                 ge=0, le=1)
    saturation: float = opt(SATURATION, "mi_sym at this fraction of log K or more is reported as saturated.", gt=0,
                            le=1)
    bootstrap: int = opt(1000, "Bootstrap resamples for the SI interval.", ge=1)
    per_principle: bool = opt(False, "Also one row per principle.")
    pool: bool = opt(False, "Treat the principles of SETS (default: every shipped set) as one pool of candidates "
                            "and rank its K-subsets (needs --choose); each principle is generated and read once.")
    choose: int | None = opt(None, "With --pool: K, the number of principles per subset.", ge=2, metavar="K")
    top: int | None = opt(None, "With --pool: report only the best T subsets (default: every subset scored).",
                          ge=1, metavar="T")
    seed: int = opt(0, "Seed for prompts, sampling and bootstrap.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    out: str | None = opt(None, "Write the report here instead of stdout.", metavar="FILE", output="file")
    format: str = opt("csv", "Report format.", choices=FORMATS)

    def check(self) -> None:
        require(not self.pool or self.choose is not None,
                "--pool needs --choose K, the number of principles per subset.")
        require(self.pool or self.choose is None, "--choose needs --pool (it picks K principles from a pool).")
        require(self.pool or self.top is None, "--top needs --pool (it limits the pool's subsets).")
