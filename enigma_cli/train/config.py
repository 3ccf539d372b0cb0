"""`TrainConfig`: every option of the ENIGMA training loop, validated before anything loads.

The options that only TRL's trainer has (vLLM, the Hub, Liger, entropy masking, VESPO) are not here:
`trl.options.TrlTrainConfig` adds them, and that subclass is the single source of `enigma train`'s flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import grpo
from ..errors import InputError, require
from ..options import Options, device_opt, dtype_opt, opt
from .rewards import parse_reward_spec

# the choices of the GRPO term are its registries' names in core (a new surrogate or aggregation is a flag value
# as soon as it is registered there)
LOSS_TYPES = grpo.LOSS_TYPES  # core.aggregation.AGGREGATIONS
SURROGATES = grpo.SURROGATE_NAMES  # core.surrogates.SURROGATES
REF_DTYPES = ("auto", "float32", "bfloat16", "float16")
IMPORTANCE_LEVELS = grpo.IMPORTANCE_LEVELS
SCALES = grpo.REWARD_SCALES
SAMPLERS = ("auto", "shared", "hf", "lean")  # models.sampler.ENGINES, plus the old name "lean" (= shared)
STREAM_FORMATS = ("csv", "jsonl")
BACKENDS = ("native", "trl")
REPORTERS = ("none", "tensorboard", "trackio", "wandb")
SATURATED_REWARDS = ("coherence", "none")  # train.rewards.compute_rewards(saturated=...)


@dataclass(frozen=True)
class TrainConfig(Options):
    # what to train on
    model: str = opt("enigma-tiny", "enigma-tiny, smollm2, a local model folder, a run folder or a hub id.")
    principles: str = opt("stepwise-vs-oneline", "Principle set: a shipped name or a YAML file.")
    dataset: str = opt("synthetic", "'synthetic', a JSONL/CSV/parquet file, or a hub id.")
    question_column: str | None = opt(None, "Column holding the question.")
    answer_column: str | None = opt(None, "Column holding the answer.")
    # the rollout
    steps: int = opt(50, "Optimisation steps (generations).", ge=1)
    prompts_per_step: int = opt(4, "Prompts per step (per process).", ge=1)
    group_size: int = opt(8, "Completions per prompt (G).", short="-G", ge=1)
    principles_per_prompt: int = opt(2, "Principles per prompt (K); G/K completions each.", short="-K", ge=2)
    max_new_tokens: int = opt(96, "Longest completion, in tokens.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature.", gt=0)
    sampler: str = opt("auto", "Rollout sampler: shared (each prompt prefilled once, its cache shared by its G "
                               "samples; draws what generate draws), hf (transformers' generate), or auto (shared "
                               "where the model allows). 'lean' is an old name of shared.", choices=SAMPLERS)
    # the optimiser
    lr: float | None = opt(None, "AdamW learning rate (default: per model size, see docs: 3e-4 for enigma-tiny, "
                                 "2e-5 with LoRA above 20M parameters).", gt=0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0)
    warmup_steps: int = opt(0, "Linear learning-rate warm-up, in steps.", ge=0)
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.", gt=0)
    updates_per_generation: int = opt(1, "Policy updates per generation (μ).", ge=1)
    grad_accum: int = opt(1, "Micro-batches per update (splits the prompts).", ge=1)
    lora_r: int | None = opt(None, "LoRA rank; 0 = full fine-tuning (default: full for enigma-tiny-sized models, "
                                   "16 above 20M parameters).", ge=0)
    lora_alpha: int = opt(16, "LoRA alpha (scale = alpha / r).", ge=1)
    # the GRPO term
    loss_type: str = opt("grpo", "Loss aggregation (TRL's definitions; TRL's cispo is --surrogate cispo "
                                 "--loss-type dapo).", choices=LOSS_TYPES)
    importance_level: str = opt("sequence", "Importance ratio per token, or per sequence (GSPO, the paper's).",
                                choices=IMPORTANCE_LEVELS)
    scale_rewards: str = opt("group", "Advantage scaling.", choices=SCALES)
    epsilon: float = opt(0.2, "Clip range below (and above, unless --epsilon-high).", gt=0)
    epsilon_high: float | None = opt(None, "Clip range above.", gt=0)
    beta: float = opt(0.0, "KL-to-reference weight (k3 estimator).", ge=0)
    surrogate: str = opt("clip", "Policy surrogate: clip (PPO), cispo (needs --epsilon-high, its cap on the "
                                 "ratio), sapo.", choices=SURROGATES)
    sapo_temperature_pos: float = opt(1.0, "SAPO's temperature for positive advantages.", gt=0)
    sapo_temperature_neg: float = opt(1.05, "SAPO's temperature for negative advantages.", gt=0)
    # rewards
    reward: str = opt("format", "Reward terms with weights, e.g. 'format' or 'format=1,coherence=0.5' ('graded': "
                                "format plus credit for a one-number answer and reasoning of a sane length).")
    saturated_reward: str = opt("coherence", "Reward for the groups whose reward has no spread (e.g. format learnt by "
                                        "every completion): coherence (the label-free majority reward) or none.",
                                choices=SATURATED_REWARDS)
    format_weights: tuple[float, ...] = opt((1.0, 0.5, 0.5), "Weights of the strict, soft and tag parts of the "
                                                              "format reward, e.g. 1,0.5,0.5.", ge=0)
    coherence_gamma: float = opt(2.0, "γ of the coherence target q ∝ p̂^γ. It only scales the coherence reward, "
                                      "so with --scale-rewards group it matters only next to other reward terms.",
                                 gt=0)
    gibbs_beta: float = opt(1.0, "β of the Gibbs target q ∝ p̂·exp(R/β).", gt=0)
    numeric_answers: bool = opt(True, "Compare answers as numbers where they parse as numbers.",
                                negative="--text-answers")
    # the SAMI term
    sami: bool = opt(True, "Ablation: switch the SAMI term.", negative="--no-sami")
    lambda_sami: float = opt(0.1, "Weight of the SAMI InfoNCE term.", ge=0)
    # Critic matrices per prompt that SAMI scores (0: all G/K). One gave the same MI gain as all four in 50 steps
    # (0.034 vs 0.033 nats) at 1.2-1.35x the GRPO-only step instead of 1.5-1.85x (BENCHMARKS.md).
    sami_matrices: int = opt(1, "Critic matrices per prompt that SAMI scores, of G/K (0: all; fewer is cheaper, "
                                "same expectation).", ge=0)
    sami_prompts: int = opt(0, "Prompts per step whose critic matrices SAMI scores (0: all). Fewer is cheaper at "
                               "large K; the step's prompts are drawn at random, so the SAMI loss keeps its "
                               "expectation and gains variance.", ge=0)
    # the OT term
    ot: bool = opt(True, "Ablation: switch the OT term.", negative="--no-ot")
    lambda_ot: float = opt(1.0, "Weight of the Sinkhorn OT term.", ge=0)
    ot_layers: tuple[int, ...] = opt((), "Hidden-state layers for OT, e.g. 2,4 (auto: one middle layer and the "
                                          "last).", metavar="auto|LIST")
    ot_eps: float = opt(0.05, "Entropic regularisation of the OT term.", gt=0)
    kl_warn: float = opt(0.1, "Warn once when the KL to the reference passes this.", gt=0)
    ref_metrics: bool = opt(True, "Log the KL to the reference and the OT drift in every ablation (costs a "
                                  "reference copy and a reference pass per step).", negative="--no-ref-metrics")
    critic_metrics: bool = opt(True, "Log the critic's MI bound without SAMI (a no-grad forward of the "
                                     "off-diagonal pairs per step).", negative="--no-critic-metrics")
    ref_dtype: str = opt("auto", "dtype of the frozen reference copy (auto: the run's).", choices=REF_DTYPES)
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward instead of keeping them (less "
                                              "memory, about 8% slower).")
    keep_dropout: bool = opt(False, "Keep the model's dropout in the update's forward (off by default, so that "
                                    "on-policy ratios are exactly 1).")
    # the run
    backend: str = opt("native", "Training loop: native (enigma's own; DDP under torchrun) or trl (EnigmaGRPOTrainer: "
                                 "accelerate, FSDP, DeepSpeed, vLLM, the Hub).", choices=BACKENDS)
    report_to: tuple[str, ...] = opt((), "Experiment trackers: none, tensorboard, trackio, wandb (repeatable or a "
                                         "comma list; tensorboard writes to OUTPUT_DIR/tensorboard).",
                                     choices=REPORTERS, split=True, metavar="none|tensorboard|trackio|wandb")
    output_dir: str = opt("runs/enigma", "Where metrics, completions and checkpoints go.", metavar="DIR",
                      output="dir")
    save_every: int = opt(0, "Checkpoint every N steps (0: only at the end).", ge=0)
    save_total_limit: int | None = opt(None, "Keep only the newest N checkpoints (never deleting the one --resume "
                                             "latest needs).", ge=1)
    save_model_only: bool = opt(False, "Checkpoints without optimizer state (a third of the size; such a checkpoint "
                                       "cannot be resumed exactly, only trained from with --model).")
    resume: str | None = opt(None, "'latest' or a checkpoint folder to continue from.")
    max_nonfinite: int = opt(3, "Abort after this many steps in a row with a non-finite loss or gradient.", ge=1)
    format: str | None = opt(None, "Also stream the metrics rows to stdout.", choices=STREAM_FORMATS)
    seed: int = opt(0, "Seed for prompts, principles and sampling.")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def check(self) -> None:
        require(self.group_size % self.principles_per_prompt == 0,
                f"--group-size ({self.group_size}) must be divisible by --principles-per-prompt "
                f"({self.principles_per_prompt}): each principle gets G/K completions.")
        require(self.prompts_per_step % self.grad_accum == 0,
                f"--prompts-per-step ({self.prompts_per_step}) must be divisible by --grad-accum ({self.grad_accum}).")
        require(self.sami_matrices <= self.group_size // self.principles_per_prompt,
                f"--sami-matrices must lie in [0, G/K = {self.group_size // self.principles_per_prompt}] "
                f"(0: all), not {self.sami_matrices}.")
        require(self.sami_prompts <= self.prompts_per_step,
                f"--sami-prompts must lie in [0, --prompts-per-step = {self.prompts_per_step}] (0: all), "
                f"not {self.sami_prompts}.")
        require(len(self.format_weights) == 3, "--format-weights must be three numbers: strict, soft, tags.")
        require(self.surrogate != "cispo" or self.epsilon_high is not None,
                "--surrogate cispo needs --epsilon-high, the cap on its importance ratio (e.g. 5.0).")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise InputError("--report-to none cannot be combined with a tracker; give none alone or the trackers.")
        parse_reward_spec(self.reward)  # raises InputError on an unknown reward

    @property
    def trackers(self) -> tuple[str, ...]:
        """The experiment trackers asked for ("none" dropped)."""
        return tuple(dict.fromkeys(r for r in self.report_to if r != "none"))

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
