"""`EnigmaGRPOConfig`: TRL's `GRPOConfig` plus the ENIGMA fields (principles, K, the SAMI and OT terms, metrics).

Every TRL option keeps its meaning, with one thing to know: TRL's ``num_generations`` stays *completions per TRL
prompt*, and a TRL prompt is one (question, principle) pair. A question's group therefore holds
G = ``principles_per_prompt`` × ``num_generations`` completions (K principles × G/K each), and every micro-batch
(``per_device_train_batch_size`` completions) must hold whole questions, so that the SAMI critic matrices (matched
negatives within one question, docs/method.md §3) can be built inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

ADVANTAGE_GROUPINGS = ("question", "principle")


@dataclass
class EnigmaGRPOConfig(GRPOConfig):
    r"""`GRPOConfig` with the ENIGMA objective L = L_GRPO + λ_SAMI·L_SAMI + λ_OT·S_ε (docs/method.md §2-5).

    Parameters (beyond `GRPOConfig`'s)
    ----------------------------------
    principles : str
        A shipped principle set (``enigma principles list``) or a YAML file; ignored when ``principle_texts`` is
        given.
    principle_texts : list of str, optional
        The principles themselves, instead of a set.
    principles_per_prompt : int
        K, the principles each question is asked under (drawn per question from the set); G = K·num_generations.
    lambda_sami, sami_matrices, sami_prompts : float, int, int
        Weight of SAMI's symmetric InfoNCE, how many of the G/K critic matrices per question it scores (0: all), and
        how many questions per optimizer step (per process) get critic matrices (0: all).
    lambda_ot, ot_layers, ot_eps : float, list of int, float
        Weight of the debiased Sinkhorn divergence between the policy's and the reference's pooled hidden states,
        its layers (None: one middle layer and the last) and its ε.
    critic_metrics, ref_metrics : bool
        Log the critic's MI bound (and SI) when SAMI is off; log the KL and OT drift to the reference when those
        terms are off (the reference pass costs a forward per generation).
    ref_dtype : str
        dtype of the frozen reference copy ("auto": the policy's).
    advantage_grouping : {"question", "principle"}
        "question" (default, as `enigma train`): advantages normalised over the question's G completions;
        "principle": TRL's own, over each (question, principle) pair's G/K.
    question_column : str
        Dataset column of the question; without it, ``prompt`` (a string, or the last user message).
    completions_jsonl : bool
        Append every completion (all ranks) to ``output_dir/completions.jsonl``, as `enigma train` does.
    """

    principles: str = field(default="stepwise-vs-oneline", metadata={"help": "Principle set: name or YAML file."})
    principle_texts: list[str] | None = field(default=None, metadata={"help": "Principle texts (instead of a set)."})
    principles_per_prompt: int = field(default=2, metadata={"help": "K principles per question."})
    lambda_sami: float = field(default=0.1, metadata={"help": "Weight of the SAMI InfoNCE term (0: off)."})
    sami_matrices: int = field(default=1, metadata={"help": "Critic matrices per question SAMI scores (0: all)."})
    sami_prompts: int = field(default=0, metadata={"help": "Questions per optimizer step SAMI scores (0: all)."})
    lambda_ot: float = field(default=1.0, metadata={"help": "Weight of the Sinkhorn OT term (0: off)."})
    ot_layers: list[int] | None = field(default=None, metadata={"help": "Hidden-state layers of the OT term."})
    ot_eps: float = field(default=0.05, metadata={"help": "Entropic regularisation of the OT term."})
    critic_metrics: bool = field(default=True, metadata={"help": "Log the critic's MI bound without SAMI."})
    ref_metrics: bool = field(default=True, metadata={"help": "Log KL and OT drift to the reference."})
    ref_dtype: str = field(default="auto", metadata={"help": "dtype of the frozen reference copy."})
    advantage_grouping: str = field(default="question", metadata={"help": "question or principle."})
    question_column: str = field(default="question", metadata={"help": "Dataset column of the question."})
    completions_jsonl: bool = field(default=False, metadata={"help": "Write output_dir/completions.jsonl."})

    def __post_init__(self):
        super().__post_init__()
        k, m = self.principles_per_prompt, self.num_generations
        problems = []
        if k < 2:
            problems.append(f"principles_per_prompt must be at least 2, not {k}")
        g = k * m
        if self.per_device_train_batch_size % g:
            problems.append(f"per_device_train_batch_size ({self.per_device_train_batch_size}) must hold whole "
                            f"questions: a multiple of principles_per_prompt × num_generations = {g}")
        if self.lambda_sami < 0 or self.lambda_ot < 0:
            problems.append("lambda_sami and lambda_ot must be at least 0")
        if not 0 <= self.sami_matrices <= m:
            problems.append(f"sami_matrices must lie in [0, num_generations = {m}], not {self.sami_matrices}")
        if self.sami_prompts < 0:
            problems.append(f"sami_prompts must be at least 0, not {self.sami_prompts}")
        if self.ot_eps <= 0:
            problems.append(f"ot_eps must be greater than 0, not {self.ot_eps}")
        if self.advantage_grouping not in ADVANTAGE_GROUPINGS:
            problems.append(f"advantage_grouping must be question or principle, not {self.advantage_grouping!r}")
        if self.advantage_grouping == "question" and self.multi_objective_aggregation != "sum_then_normalize":
            problems.append("advantage_grouping='question' needs multi_objective_aggregation='sum_then_normalize'")
        if self.mask_truncated_completions:
            problems.append("mask_truncated_completions is not supported: the critic scores every completion")
        if self.ref_dtype not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(f"ref_dtype must be auto, float32, bfloat16 or float16, not {self.ref_dtype!r}")
        if problems:
            raise ValueError("EnigmaGRPOConfig: " + "; ".join(problems) + ".")

    @property
    def group_size(self) -> int:
        """G: completions per question (K principles × num_generations)."""
        return self.principles_per_prompt * self.num_generations

    @property
    def use_sami(self) -> bool:
        return self.lambda_sami > 0

    @property
    def use_ot(self) -> bool:
        return self.lambda_ot > 0

    @property
    def needs_reference(self) -> bool:
        """The OT term, or the reference metrics, need π_ref's hidden states (β > 0 is TRL's own business)."""
        return self.use_ot or self.ref_metrics
