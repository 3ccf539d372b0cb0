"""Answer-level rewards (method.md §7) against hand-computed groups and sampling properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from enigma_cli.core import (
    answer_frequencies,
    coherence_rewards,
    diversity_rewards,
    gibbs_rewards,
    pairwise_coherence_rewards,
    target_distribution,
)
from enigma_cli.core.answer_rewards import LOG_FLOOR
from enigma_cli.core.answer_stats import group_answer_stats, majority_vote

# One hand-computed group, G = 4: p̂(3) = 2/4, p̂(5) = 1/4, and one unparsable completion.
GROUP = ["3", "3", "5", None]


def close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_answer_frequencies_count_all_g():
    assert answer_frequencies(GROUP + ["a", "b", "a", "a"], 4) == [
        {"3": 0.5, "5": 0.25},
        {"a": 0.75, "b": 0.25},
    ]
    assert answer_frequencies([None, None], 2) == [{}]


def test_target_distribution_by_hand():
    p_hat = {"3": 0.5, "5": 0.25}
    # Coherence, γ = 2: q ∝ (1/4, 1/16) → (4/5, 1/5).
    q = target_distribution(p_hat, "coherence", gamma=2.0)
    assert q == pytest.approx({"3": 0.8, "5": 0.2})
    # γ = 1 renormalises p̂ over the observed answers.
    assert target_distribution(p_hat, "coherence", gamma=1.0) == pytest.approx({"3": 2 / 3, "5": 1 / 3})
    assert target_distribution(p_hat, "diversity") == pytest.approx({"3": 0.5, "5": 0.5})
    # Gibbs, β = 1, R = 1[z = 5]: q ∝ (1/2, e/4).
    z = 0.5 + math.e / 4
    q = target_distribution(p_hat, "gibbs", reward={"5": 1.0})
    assert q == pytest.approx({"3": 0.5 / z, "5": math.e / 4 / z})
    assert target_distribution({}, "coherence") == {}


def test_target_distribution_errors():
    with pytest.raises(ValueError, match="unknown target kind"):
        target_distribution({"a": 1.0}, "entropy")
    with pytest.raises(ValueError, match="reward"):
        target_distribution({"a": 1.0}, "gibbs")
    with pytest.raises(ValueError, match="beta"):
        target_distribution({"a": 1.0}, "gibbs", reward={}, beta=0.0)


def test_coherence_by_hand():
    # r = log q − log p̂: log(4/5) − log(1/2) = log(8/5); log(1/5) − log(1/4) = log(4/5); None → min.
    close(coherence_rewards(GROUP, 4, gamma=2.0), [math.log(8 / 5)] * 2 + [math.log(4 / 5)] * 2)
    # γ = 3: q ∝ (1/8, 1/64) → (8/9, 1/9); r = log(16/9), log(4/9).
    close(coherence_rewards(GROUP, 4, gamma=3.0), [math.log(16 / 9)] * 2 + [math.log(4 / 9)] * 2)


def test_pairwise_by_hand():
    # The two "3"s each see one other "3" among G − 1 = 3; "5" sees none; None → min = 0.
    close(
        pairwise_coherence_rewards(GROUP + ["a", "a", "a", "b"], 4),
        [1 / 3, 1 / 3, 0, 0, 2 / 3, 2 / 3, 2 / 3, 0],
    )
    # None never matches None.
    close(pairwise_coherence_rewards(["x", "x", None, None], 4), [1 / 3, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="group_size >= 2"):
        pairwise_coherence_rewards(["a"], 1)


def test_diversity_by_hand():
    # −log(1/2) = log 2, −log(1/4) = log 4, None → min = log 2.
    close(diversity_rewards(GROUP, 4), [math.log(2), math.log(2), math.log(4), math.log(2)])


def test_gibbs_by_hand():
    # R = 1[z = "5"], β = 1: Z = 1/2 + e/4; r = R − log Z.
    log_z = math.log(0.5 + math.e / 4)
    close(gibbs_rewards(GROUP, 4, ["5"]), [-log_z, -log_z, 1 - log_z, -log_z])
    # β = 2: Z = 1/2 + e^{1/2}/4; r = R/2 − log Z.
    log_z2 = math.log(0.5 + math.exp(0.5) / 4)
    close(gibbs_rewards(GROUP, 4, ["5"], beta=2.0), [-log_z2, -log_z2, 0.5 - log_z2, -log_z2])
    # A reward_fn gives the same as labels.
    by_fn = gibbs_rewards(GROUP, 4, reward_fn=lambda z, k: float(z == "5"))
    torch.testing.assert_close(by_fn, gibbs_rewards(GROUP, 4, ["5"]))
    # A label nobody found: R ≡ 0 → q = p̂ renormalised; r = −log(3/4) for every parsable answer.
    close(gibbs_rewards(GROUP, 4, ["7"]), [-math.log(0.75)] * 4)
    with pytest.raises(ValueError, match="exactly one"):
        gibbs_rewards(GROUP, 4)
    with pytest.raises(ValueError, match="labels for"):
        gibbs_rewards(GROUP, 4, ["5", "3"])


def test_validation():
    with pytest.raises(ValueError, match="multiple"):
        coherence_rewards(["a", "b", "c"], 2)
    with pytest.raises(ValueError, match="positive integer"):
        diversity_rewards(["a"], 0)
    assert coherence_rewards([], 4).shape == (0,)


REWARDS = {
    "coherence": lambda a, g: coherence_rewards(a, g, gamma=2.0),
    "coherence_g3": lambda a, g: coherence_rewards(a, g, gamma=3.0),
    "pairwise": pairwise_coherence_rewards,
    "diversity": diversity_rewards,
    "gibbs": lambda a, g: gibbs_rewards(a, g, ["b"] * (len(a) // g)),
}

answer_groups = st.integers(2, 6).flatmap(
    lambda g: st.tuples(
        st.just(g),
        st.lists(st.sampled_from(["a", "b", "c", None]), min_size=g, max_size=4 * g).map(
            lambda xs: xs[: len(xs) - len(xs) % g]
        ),
    )
)


@pytest.mark.parametrize("name", sorted(REWARDS))
@settings(max_examples=60, deadline=None)
@given(data=answer_groups)
def test_unparsable_get_group_minimum(name, data):
    g, answers = data
    rewards = REWARDS[name](answers, g)
    assert rewards.shape == (len(answers),) and torch.isfinite(rewards).all()
    for start in range(0, len(answers), g):
        group, r = answers[start : start + g], rewards[start : start + g]
        parsable = [r[i] for i, z in enumerate(group) if z is not None]
        for i, z in enumerate(group):
            if z is None:
                assert r[i] == (min(parsable) if parsable else 0.0)
        # Equal answers get equal rewards.
        for i, z in enumerate(group):
            for j, w in enumerate(group):
                if z is not None and z == w:
                    assert r[i] == r[j]


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_all_unparsable_group_is_zero(name):
    rewards = REWARDS[name](["a", "a", "b", "a"] + [None] * 4, 4)
    assert (rewards[4:] == 0).all()
    assert (rewards[:4] != 0).any()


@settings(max_examples=100, deadline=None)
@given(data=answer_groups, gamma=st.floats(0.5, 4.0))
def test_coherence_closed_form(data, gamma):
    """r = (γ−1)·log p̂(z) − log Σ p̂^γ, independently of target_distribution."""
    g, answers = data
    rewards = coherence_rewards(answers, g, gamma=gamma)
    for k, start in enumerate(range(0, len(answers), g)):
        group = answers[start : start + g]
        counts = {z: group.count(z) / g for z in set(group) if z is not None}
        if not counts:
            continue
        log_z = math.log(sum(p**gamma for p in counts.values()))
        for i, z in enumerate(group):
            if z is not None:
                assert rewards[start + i].item() == pytest.approx(
                    (gamma - 1) * math.log(counts[z]) - log_z, abs=1e-5
                )


def test_coherence_prefers_majority_and_floor():
    r = coherence_rewards(["a", "a", "a", "b"], 4, gamma=2.0)
    assert r[0] > r[3]
    # Huge γ: q("b") underflows below the floor, the log is clipped at log ε instead of −∞.
    r = coherence_rewards(["a", "a", "a", "b"], 4, gamma=100.0)
    assert r[3].item() == pytest.approx(math.log(LOG_FLOOR) - math.log(0.25), rel=1e-6)
    assert torch.isfinite(r).all()


def test_gibbs_minus_inf_reward_is_floored():
    # R(b) = −inf: q = (1, 0); r(a) = log 1 − log(1/2); r(b) = log ε − log(1/2) instead of −∞.
    r = gibbs_rewards(["a", "b"], 2, reward_fn=lambda z, k: -math.inf if z == "b" else 0.0)
    close(r, [math.log(2), math.log(LOG_FLOOR) + math.log(2)])
    with pytest.raises(ValueError, match="finite"):
        gibbs_rewards(["a", "b"], 2, reward_fn=lambda z, k: math.nan)


def test_majority_vote_and_stats():
    answers = ["3", "5", "5", "3", "x", "y", "z", None, None, None, None, None]
    assert majority_vote(answers, 4) == ["3", "x", None]  # tie → first seen; all-unparsable → None
    stats = group_answer_stats(GROUP + ["a", "a", "a", "b"], 4)
    # distinct: (2 + 2)/2; majority share: (1/2 + 3/4)/2; parsable: (3/4 + 1)/2.
    assert stats["distinct_answers"] == pytest.approx(2.0)
    assert stats["majority_share"] == pytest.approx(0.625)
    assert stats["parsable_fraction"] == pytest.approx(0.875)

    def h(ps):
        return -sum(p * math.log(p) for p in ps)

    # Answer entropy of p̂ renormalised: (2/3, 1/3) and (3/4, 1/4); target (γ = 2): (4/5, 1/5) and (9/10, 1/10).
    assert stats["answer_entropy"] == pytest.approx((h([2 / 3, 1 / 3]) + h([0.75, 0.25])) / 2)
    assert stats["target_entropy"] == pytest.approx((h([0.8, 0.2]) + h([0.9, 0.1])) / 2)
    assert math.isnan(group_answer_stats([], 4)["distinct_answers"])
    assert group_answer_stats([None] * 4, 4)["distinct_answers"] == 0.0


# ----------------------------------------------------------------------------- estimator bias


P = np.array([0.5, 0.3, 0.2])
G = 4


def _exact_conditional_means(p: float, g: int) -> tuple[float, float, float]:
    """Given z_i with probability p, the other g−1 matches are Binomial(g−1, p). Returns E[loo], E[p̂], E[log p̂]."""
    ks = np.arange(g)
    pmf = np.array([math.comb(g - 1, k) * p**k * (1 - p) ** (g - 1 - k) for k in ks])
    return float(pmf @ (ks / (g - 1))), float(pmf @ ((ks + 1) / g)), float(pmf @ np.log((ks + 1) / g))


def test_pairwise_is_unbiased_and_log_frequency_is_not():
    rng = np.random.default_rng(0)
    n_groups = 20_000
    labels = ["a", "b", "c"]
    draws = rng.choice(len(P), size=n_groups * G, p=P)
    answers = [labels[d] for d in draws]
    pairwise = pairwise_coherence_rewards(answers, G).double().numpy()
    log_freq = -diversity_rewards(answers, G).double().numpy()  # log p̂(z_i), the coherence form's term

    for k, p in enumerate(P):
        mask = draws == k
        e_loo, e_freq, e_log = _exact_conditional_means(p, G)
        # Independent reference first: the exact leave-one-out mean is p itself.
        assert e_loo == pytest.approx(p, abs=1e-12)
        # Monte Carlo: E[r_i | z_i] = p(z_i) within ~5 standard errors.
        se = math.sqrt(p * (1 - p) / (G - 1) / mask.sum())
        assert abs(pairwise[mask].mean() - p) < 5 * se
        # The log-frequency form: exp E[log p̂] matches its exact value, differs from p, and lies below E[p̂]
        # (Jensen gap E[log p̂] − log E[p̂] < 0).
        mc_log = log_freq[mask].mean()
        assert mc_log == pytest.approx(e_log, abs=0.02)
        assert math.exp(e_log) - p > 0.05  # biased (upwards here, by self-inclusion)
        assert e_log - math.log(e_freq) < -0.01  # Jensen gap sign
        assert mc_log < math.log(np.exp(log_freq[mask]).mean())
