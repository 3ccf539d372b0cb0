"""`StudyConfig`: every option of `enigma study` (the single source of its flags)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..options import Options, device_opt, dtype_opt, opt

VARIANTS = ("enigma", "grpo", "grpo+sami", "grpo+ot")
DRAWS = ("random", "spread")
MIN_SETS = 4


@dataclass(frozen=True)
class StudyConfig(Options):
    principles: tuple[str, ...] = opt((), "Principle sets to compare (default: every shipped set); at least 4.",
                                      argument=True, metavar="SETS")
    pool: tuple[str, ...] = opt((), "Draw the sets from a pool instead: the distinct principles of these sets "
                                    "(shipped names, YAML files or folders; with --pool, SETS join the pool, so "
                                    "`--pool principles/*.yaml` works), combined --choose at a time.",
                                metavar="SETS", split=True)
    choose: int = opt(2, "Principles per set drawn from --pool (K).", ge=2)
    sets: int | None = opt(None, "How many K-subsets of the pool to study (default: every one).", ge=MIN_SETS)
    draw: str = opt("random", "How --sets are drawn from the pool: random (with --seed; a study can grow), or "
                              "spread (the base model scores the whole pool once and the sets are taken at evenly "
                              "spaced ranks of SI).", choices=DRAWS)
    model: str = opt("enigma-tiny", "The base model every run starts from: enigma-tiny, smollm2, a folder (e.g. "
                                    "an `enigma sft` output) or a hub id.")
    seeds: tuple[int, ...] = opt((0, 1), "Training seeds per set and variant, e.g. 0,1.")
    variants: tuple[str, ...] = opt(("enigma", "grpo"), "Training variants: enigma (full), grpo (GRPO only), "
                                                        "grpo+sami, grpo+ot.", choices=VARIANTS, split=True)
    steps: int = opt(50, "Training steps of every run.", ge=1)
    prompts_per_step: int = opt(4, "Training prompts per step.", ge=1)
    group_size: int = opt(8, "Completions per training prompt (G).", short="-G", ge=2)
    max_new_tokens: int = opt(96, "Longest completion, in tokens (training, scoring and evaluation).", ge=1)
    lr: float | None = opt(None, "Learning rate of every run (default: per model size, as `enigma train`).", gt=0)
    lora_r: int | None = opt(None, "LoRA rank of every run (default: per model size, as `enigma train`).", ge=0)
    score_prompts: int = opt(24, "Prompts per set when measuring SI, before and after training.", ge=2)
    score_samples: int = opt(4, "Completions per principle and prompt when measuring SI.", ge=1)
    dataset: str = opt("synthetic", "Evaluation questions: 'synthetic' (held-out problems), a file or a hub id.")
    question_column: str | None = opt(None, "Column holding the evaluation question.")
    answer_column: str | None = opt(None, "Column holding the evaluation answer.")
    eval_prompts: int = opt(128, "Held-out evaluation questions per run.", ge=4)
    eval_samples: int = opt(4, "Completions per evaluation question (majority vote over them).", ge=1)
    outcome_tasks: tuple[str, ...] = opt((), "lm-evaluation-harness tasks (names or task .yaml files) scored on "
                                             "every trained run as downstream outcomes, e.g. truthfulqa_mc2 (pip "
                                             "install 'enigma-cli[lm-eval]').", metavar="TASKS", split=True)
    output_dir: str = opt("runs/study", "The study folder: every run, the tables, the plots and REPORT.md.",
                          metavar="DIR")
    shard: str | None = opt(None, "Do only shard I of N of the work units (e.g. 2/4, 1-based), for your own "
                                  "scheduler; no analysis. Merge with --merge once every shard is done.",
                          metavar="I/N")
    merge: bool = opt(False, "Do no training: analyse the finished units of the study folder (fails when some "
                             "are missing).")
    probe: bool = opt(True, "With --dry-run, time a short probe (2 training steps, a few evaluations) to estimate "
                            "the wall time.", negative="--no-probe")
    min_rho: float = opt(0.3, "The weakest correlation with SI the claim needs: an interval that excludes every ρ "
                              "this strong in the claimed direction rules the outcome out.", gt=0, lt=1)
    noise_from: str | None = opt(None, "With --dry-run: an earlier study folder whose seed noise and set spread "
                                       "the power estimate uses (default: this folder's finished runs, if any).",
                                 metavar="DIR")
    seed: int = opt(0, "Seed of scoring, evaluation questions, pool draws and the statistics (bootstrap, "
                       "permutations).")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def check(self) -> None:
        if len(set(self.principles)) != len(self.principles):
            raise InputError("a principle set is named twice; give each set once.")
        if self.principles and len(self.principles) < MIN_SETS:
            raise InputError(f"a study needs at least {MIN_SETS} principle sets to correlate SI with outcomes, "
                             f"not {len(self.principles)}.")
        if not self.seeds:
            raise InputError("--seeds needs at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds repeats a seed ({', '.join(map(str, self.seeds))}).")
        if len(set(self.variants)) != len(self.variants) or not self.variants:
            raise InputError("--variants must name each variant once.")
        if self.shard is not None:
            shard_of(self.shard)
        if not self.pool and self.sets is not None:
            raise InputError("--sets draws sets from a pool; give --pool too.")
        if not self.pool and self.draw != "random":
            raise InputError("--draw chooses how sets are drawn from a pool; give --pool too.")
        if self.noise_from is not None and self.merge:
            raise InputError("--noise-from informs the power of a plan (--dry-run); --merge analyses a finished study.")
        if self.shard is not None and self.merge:
            raise InputError("--shard runs a share of the work and --merge analyses it; give one of them.")

    @property
    def paired(self) -> bool:
        """Whether the paired ENIGMA vs GRPO-only comparison can be made."""
        return "enigma" in self.variants and "grpo" in self.variants


def shard_of(text: str) -> tuple[int, int]:
    """'I/N' (1-based) → (I, N); one sentence on anything else."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like I/N, e.g. 2/4, not {text!r}.") from None
    if not 1 <= i <= n:
        raise InputError(f"--shard {text}: I must lie in 1..N.")
    return i, n
