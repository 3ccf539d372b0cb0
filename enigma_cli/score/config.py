"""`ScoreConfig`: every option of `enigma score-principles` (the single source of its flags)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import require
from ..options import Options, device_opt, dtype_opt, opt
from ..report import FORMATS
from .sequential import MAX_LOOKS, MAX_PROMPTS, ROUND_PROMPTS, SAMPLES, Plan

CRITICS = ("mean", "sum")  # the critic of the main SI columns (enigma_cli.score.scoring)
SATURATION = 0.95  # mi_sym at this fraction of log K is saturated (enigma_cli.score.trust)
FIXED_SAMPLES = 4  # --samples without --until-decided


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
    samples: int | None = opt(None, f"Completions per principle and prompt (M; default {FIXED_SAMPLES}, with "
                                    f"--until-decided {SAMPLES}: more prompts with fewer samples each decide "
                                    "sooner, BENCHMARKS.md).", ge=1)
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
    until_decided: bool = opt(False, "Add prompts in rounds until every set's SI interval excludes 0 (and, with "
                                     "--rank, the leader's lead over the runner-up), or until --max-prompts or "
                                     "--max-minutes runs out; replaces --prompts. Intervals are t intervals at "
                                     "one level for every round, set so that all rounds' intervals cover together "
                                     "95% of the time (Pocock-type), so stopping early keeps their 95% coverage "
                                     "(method.md §4).")
    round_prompts: int | None = opt(None, f"With --until-decided: prompts added per round (default "
                                          f"{ROUND_PROMPTS}).", ge=2, metavar="R")
    max_prompts: int | None = opt(None, f"With --until-decided: the most prompts per set (default {MAX_PROMPTS}).",
                                  ge=2, metavar="P")
    max_minutes: float | None = opt(None, "With --until-decided: start no round that would end after this many "
                                          "minutes (predicted from the slowest round so far).", gt=0)
    rank: bool = opt(False, "With --until-decided: also go on until the leader's SI lead over the runner-up "
                            "excludes 0 (needs two sets or more).")
    seed: int = opt(0, "Seed for prompts, sampling and bootstrap.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    out: str | None = opt(None, "Write the report here instead of stdout.", metavar="FILE", output="file")
    format: str = opt("csv", "Report format.", choices=FORMATS)

    def check(self) -> None:
        if self.samples is None:  # the default depends on --until-decided (frozen: set in place, as check_values)
            object.__setattr__(self, "samples", SAMPLES if self.until_decided else FIXED_SAMPLES)
        require(not self.pool or self.choose is not None,
                "--pool needs --choose K, the number of principles per subset.")
        require(self.pool or self.choose is None, "--choose needs --pool (it picks K principles from a pool).")
        require(self.pool or self.top is None, "--top needs --pool (it limits the pool's subsets).")
        for name in ("round_prompts", "max_prompts", "max_minutes", "rank"):
            require(self.until_decided or getattr(self, name) in (None, False),
                    f"--{name.replace('_', '-')} needs --until-decided (it shapes its rounds).")
        if self.until_decided:
            require(not self.pool, "--until-decided scores principle sets; it does not work with --pool yet.")
            plan = self.plan()
            require(plan.round <= plan.max_prompts, f"--round-prompts {plan.round} exceeds --max-prompts "
                                                    f"{plan.max_prompts}; a round cannot be larger than the budget.")
            require(plan.looks <= MAX_LOOKS, f"--max-prompts {plan.max_prompts} in rounds of --round-prompts "
                                             f"{plan.round} plans {plan.looks} looks; at most {MAX_LOOKS} (the "
                                             "adjusted intervals would be too wide to decide anything).")

    def plan(self) -> Plan:
        """The rounds of --until-decided, defaults filled in (`sequential.Plan`)."""
        return Plan(self.round_prompts or ROUND_PROMPTS, self.max_prompts or MAX_PROMPTS,
                    None if self.max_minutes is None else 60.0 * self.max_minutes)
