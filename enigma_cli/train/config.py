"""`TrainConfig`: every option of `enigma train`, validated before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InputError

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
SURROGATES = ("clip", "cispo", "sapo")
REF_DTYPES = ("auto", "float32", "bfloat16", "float16")
IMPORTANCE_LEVELS = ("token", "sequence")
SCALES = ("group", "batch", "none")
SAMPLERS = ("auto", "lean", "hf")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "enigma-tiny"
    principles: str = "stepwise-vs-oneline"
    dataset: str | None = None
    question_column: str | None = None
    answer_column: str | None = None
    steps: int = 50
    prompts_per_step: int = 4
    group_size: int = 8
    principles_per_prompt: int = 2
    max_new_tokens: int = 96
    temperature: float = 1.0
    sampler: str = "auto"  # rollout.generate's engine: lean (Llama models), hf (model.generate), auto
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    loss_type: str = "grpo"
    importance_level: str = "sequence"
    scale_rewards: str = "group"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    lambda_sami: float = 0.1
    # Critic matrices per prompt that SAMI scores (0: all G/K). One gave the same MI gain as all four in 50 steps
    # (0.034 vs 0.033 nats) at 1.2-1.35x the GRPO-only step instead of 1.5-1.85x (BENCHMARKS.md).
    sami_matrices: int = 1
    lambda_ot: float = 1.0
    ot_layers: tuple[int, ...] = ()  # empty: one middle layer and the last (method.md §5)
    ot_eps: float = 0.05
    sami: bool = True
    ot: bool = True
    reward: str = "format"
    format_weights: tuple[float, float, float] = (1.0, 0.5, 0.5)  # strict, soft, tags (method.md §1)
    coherence_gamma: float = 2.0
    gibbs_beta: float = 1.0
    numeric_answers: bool = True
    updates_per_generation: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    lora_r: int = 0
    lora_alpha: int = 16
    output_dir: str = "runs/enigma"
    save_every: int = 0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    max_nonfinite: int = 3
    # Log KL and hidden-state drift to the reference (needs a reference copy and a reference pass per step).
    ref_metrics: bool = True
    # Policy surrogate (core.surrogates): clip (PPO), cispo (needs epsilon_high = its cap), sapo.
    surrogate: str = "clip"
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    # Log the critic's MI bound without SAMI (a no-grad forward of the off-diagonal pairs per step).
    critic_metrics: bool = True
    # dtype of the frozen reference copy; auto: the run's dtype.
    ref_dtype: str = "auto"
    # Recompute activations in the backward instead of keeping them (TRL's GRPOConfig default is True).
    gradient_checkpointing: bool = False
    # Keep the model's dropout in the update's forward (off by default: on-policy ratios are then exactly 1).
    keep_dropout: bool = False
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise InputError(msg)

        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "updates_per_generation",
                     "grad_accum", "max_nonfinite"):
            need(int(getattr(self, name)) >= 1, f"--{name.replace('_', '-')} must be at least 1, "
                                                f"not {getattr(self, name)}.")
        need(self.principles_per_prompt >= 2, f"--principles-per-prompt (K) must be at least 2, "
                                              f"not {self.principles_per_prompt}.")
        need(self.group_size % self.principles_per_prompt == 0,
             f"--group-size ({self.group_size}) must be divisible by --principles-per-prompt "
             f"({self.principles_per_prompt}): each principle gets G/K completions.")
        need(self.prompts_per_step % self.grad_accum == 0,
             f"--prompts-per-step ({self.prompts_per_step}) must be divisible by --grad-accum ({self.grad_accum}).")
        need(self.loss_type in LOSS_TYPES, f"--loss-type must be one of {', '.join(LOSS_TYPES)}, "
                                           f"not {self.loss_type!r}.")
        need(self.importance_level in IMPORTANCE_LEVELS,
             f"--importance-level must be token or sequence, not {self.importance_level!r}.")
        need(self.scale_rewards in SCALES, f"--scale-rewards must be one of {', '.join(SCALES)}, "
                                           f"not {self.scale_rewards!r}.")
        need(self.surrogate in SURROGATES, f"--surrogate must be one of {', '.join(SURROGATES)}, "
                                           f"not {self.surrogate!r}.")
        need(self.surrogate != "cispo" or (self.epsilon_high is not None and self.epsilon_high > 0),
             "--surrogate cispo needs --epsilon-high, the cap on its importance ratio (e.g. 5.0).")
        need(self.sapo_temperature_pos > 0 and self.sapo_temperature_neg > 0,
             "sapo_temperature_pos and sapo_temperature_neg must be positive.")
        need(self.ref_dtype in REF_DTYPES, f"--ref-dtype must be one of {', '.join(REF_DTYPES)}, "
                                           f"not {self.ref_dtype!r}.")
        need(self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, not {self.sampler!r}.")
        need(self.lr > 0, f"--lr must be positive, not {self.lr}.")
        need(self.temperature > 0, f"--temperature must be positive for GRPO sampling, not {self.temperature}.")
        need(self.ot_eps > 0, f"--ot-eps must be positive, not {self.ot_eps}.")
        need(self.epsilon > 0, f"--epsilon must be positive, not {self.epsilon}.")
        need(self.beta >= 0 and self.lambda_sami >= 0 and self.lambda_ot >= 0,
             "--beta, --lambda-sami and --lambda-ot must be non-negative.")
        need(0 <= self.sami_matrices <= self.group_size // self.principles_per_prompt,
             f"--sami-matrices must lie in [0, G/K = {self.group_size // self.principles_per_prompt}] "
             f"(0: all), not {self.sami_matrices}.")
        need(len(self.format_weights) == 3, "format_weights must be three numbers: strict, soft, tags.")
        object.__setattr__(self, "ot_layers", tuple(int(x) for x in self.ot_layers))
        object.__setattr__(self, "format_weights", tuple(float(x) for x in self.format_weights))
        from .rewards import parse_reward_spec

        parse_reward_spec(self.reward)  # raises InputError on an unknown reward

    @property
    def use_sami(self) -> bool:
        return self.sami and self.lambda_sami > 0

    @property
    def use_ot(self) -> bool:
        return self.ot and self.lambda_ot > 0

    @property
    def ablation(self) -> str:
        return {(False, False): "grpo", (True, False): "grpo+sami", (False, True): "grpo+ot",
                (True, True): "enigma"}[(self.use_sami, self.use_ot)]
