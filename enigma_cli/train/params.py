"""The parameters of the rollout and of each ENIGMA term, apart from the run's whole configuration.

A term reads only its own small frozen object, so a reader of `terms.py` or `objective.py` sees what each term
depends on, and both backends build the same objects: `enigma train` from its `TrainConfig` (`from_train_config`),
the TRL backend from its `EnigmaGRPOConfig` (`trl.trainer.objective_params`). The rollout (`episodes.collect`)
reads `RolloutParams` (`rollout_from_train_config`); the sampling temperature is read from the config here only,
so that the sampler and the log-probs of the objective use one value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GrpoParams:
    """The policy term's choices (method.md §2): `core.grpo_loss`'s surrogate, aggregation and clip range."""

    surrogate: str = "clip"
    loss_type: str = "grpo"
    importance_level: str = "sequence"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0
    max_completion_length: int | None = None
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05


@dataclass(frozen=True)
class SamiParams:
    """The SAMI term and the critic it trains or only logs (method.md §3-4).

    ``weight`` is λ_SAMI (0: the term is off); ``matrices`` and ``prompts`` are ``--sami-matrices`` and
    ``--sami-prompts`` (0: all); ``log_critic`` scores the critic for the metrics when the term is off.
    """

    weight: float = 0.0
    matrices: int = 0
    prompts: int = 0
    log_critic: bool = True

    @property
    def on(self) -> bool:
        return self.weight > 0

    @property
    def scores_critic(self) -> bool:
        """Whether the off-diagonal critic entries are scored at all (to train on, or to log)."""
        return self.on or self.log_critic


@dataclass(frozen=True)
class OtParams:
    """The Sinkhorn term (method.md §5): ``weight`` is λ_OT (0: only the drift is logged), ``eps`` its ε."""

    weight: float = 0.0
    eps: float = 0.05

    @property
    def on(self) -> bool:
        return self.weight > 0


@dataclass(frozen=True)
class ObjectiveParams:
    """Every term's parameters, and the sampling temperature the log-probs are read at (as in TRL)."""

    grpo: GrpoParams
    sami: SamiParams
    ot: OtParams
    temperature: float = 1.0


@dataclass(frozen=True)
class RewardParams:
    """The reward of a rollout (method.md §1, §7, §8): `rewards.compute_rewards`' spec and its settings."""

    spec: str = "format"
    format_weights: tuple[float, ...] = (1.0, 0.5, 0.5)
    gamma: float = 2.0
    gibbs_beta: float = 1.0
    numeric: bool = True
    saturated: str = "coherence"


@dataclass(frozen=True)
class RolloutParams:
    """One generation (`episodes.collect`): ``prompts`` per step, K principles each, G completions per prompt."""

    prompts: int
    k: int
    group_size: int
    max_new_tokens: int
    temperature: float
    sampler: str
    seed: int
    scale_rewards: str
    reward: RewardParams

    @property
    def m(self) -> int:
        """G/K: completions per principle."""
        return self.group_size // self.k


def rollout_from_train_config(cfg) -> RolloutParams:
    """`enigma train`'s `TrainConfig` as the rollout's parameters."""
    reward = RewardParams(spec=cfg.reward, format_weights=tuple(cfg.format_weights), gamma=cfg.coherence_gamma,
                          gibbs_beta=cfg.gibbs_beta, numeric=cfg.numeric_answers, saturated=cfg.saturated_reward)
    return RolloutParams(prompts=cfg.prompts_per_step, k=cfg.principles_per_prompt, group_size=cfg.group_size,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, sampler=cfg.sampler,
                         seed=cfg.seed, scale_rewards=cfg.scale_rewards, reward=reward)


def from_train_config(cfg) -> ObjectiveParams:
    """`enigma train`'s `TrainConfig` as the terms' parameters (an ablated term gets weight 0)."""
    grpo = GrpoParams(surrogate=cfg.surrogate, loss_type=cfg.loss_type, importance_level=cfg.importance_level,
                      epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                      max_completion_length=cfg.max_new_tokens, sapo_temperature_pos=cfg.sapo_temperature_pos,
                      sapo_temperature_neg=cfg.sapo_temperature_neg)
    sami = SamiParams(weight=cfg.lambda_sami if cfg.use_sami else 0.0, matrices=cfg.sami_matrices,
                      prompts=cfg.sami_prompts, log_critic=cfg.critic_metrics)
    ot = OtParams(weight=cfg.lambda_ot if cfg.use_ot else 0.0, eps=cfg.ot_eps)
    return ObjectiveParams(grpo, sami, ot, rollout_from_train_config(cfg).temperature)
