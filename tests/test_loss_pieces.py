"""The pieces `grpo_loss` is composed of, each against a brute-force reference written with Python scalars.

`test_grpo.py` checks the composition against TRL's loss code; here each surrogate, each aggregation, the
importance weight and the k3 estimator are checked alone, element by element, with their gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from enigma_cli.core.aggregation import AGGREGATIONS, aggregate
from enigma_cli.core.kl import k3_kl, masked_token_mean
from enigma_cli.core.surrogates import (
    SURROGATES,
    SurrogateParams,
    cispo_surrogate,
    clip_surrogate,
    importance_log_weight,
    sapo_surrogate,
)

G = torch.Generator().manual_seed(0)
W = torch.exp(0.6 * torch.randn(5, 6, generator=G, dtype=torch.float64))  # ratios on both sides of [0.8, 1.2]
A = torch.tensor([[1.0], [-1.0], [0.5], [-0.3], [0.0]], dtype=torch.float64)
LENGTHS = [6, 4, 1, 3, 0]
MASK = (torch.arange(6)[None] < torch.tensor(LENGTHS)[:, None]).double()


def each(w, a):
    """(i, t, w_it, a_i) over every entry."""
    for i in range(w.shape[0]):
        for t in range(w.shape[1]):
            yield i, t, float(w[i, t]), float(a[i, 0])


# -- surrogates ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [None, 1.5])
def test_clip_surrogate_elementwise(delta):
    out = clip_surrogate(W, A, eps_low=0.2, eps_high=0.28, delta=delta)
    for i, t, w, a in each(W, A):
        unclipped = w if delta is None else min(w, delta)
        assert out[i, t].item() == pytest.approx(-min(unclipped * a, min(max(w, 0.8), 1.28) * a))
    assert (W > 1.28).any() and (W < 0.8).any()  # the fixture reaches both clip edges


def test_clip_surrogate_gradient_vanishes_only_where_the_clip_binds():
    w = W.clone().requires_grad_()
    (grad,) = torch.autograd.grad(clip_surrogate(w, A, eps_low=0.2, eps_high=0.2).sum(), w)
    for i, t, wv, a in each(W, A):
        binds = (a > 0 and wv > 1.2) or (a < 0 and wv < 0.8)
        assert grad[i, t].item() == pytest.approx(0.0 if binds else -a)


def test_cispo_surrogate_is_reinforce_with_a_capped_detached_weight():
    logp = -torch.rand(5, 6, generator=G, dtype=torch.float64)
    w = W.clone().requires_grad_()
    lp = logp.clone().requires_grad_()
    out = cispo_surrogate(w, A, lp, cap=1.3)
    for i, t, wv, a in each(W, A):
        assert out[i, t].item() == pytest.approx(-min(wv, 1.3) * a * float(logp[i, t]))
    g_w, g_lp = torch.autograd.grad(out.sum(), (w, lp), allow_unused=True)
    assert g_w is None or torch.all(g_w == 0)  # stop-gradient on the weight
    torch.testing.assert_close(g_lp, -torch.clamp(W, max=1.3) * A.expand_as(W))


def test_sapo_surrogate_elementwise_and_its_on_policy_slope_is_one():
    out = sapo_surrogate(W, A, tau_pos=1.0, tau_neg=1.05)
    for i, t, w, a in each(W, A):
        tau = 1.0 if a > 0 else 1.05
        assert out[i, t].item() == pytest.approx(-4 / tau * a / (1 + math.exp(-tau * (w - 1))))
    one = torch.ones(5, 1, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sapo_surrogate(one, A, tau_pos=1.0, tau_neg=1.05).sum(), one)
    torch.testing.assert_close(grad, -A)  # σ'(0)·4/τ·τ = 1: the plain policy gradient on-policy


def test_registry_names_and_cispo_needs_its_cap():
    assert set(SURROGATES) == {"clip", "cispo", "sapo"}
    with pytest.raises(ValueError, match="eps_high"):
        SURROGATES["cispo"].check(SurrogateParams())
    SURROGATES["clip"].check(SurrogateParams())


def test_importance_weight_levels():
    log_ratio = torch.randn(5, 6, generator=G, dtype=torch.float64)
    assert torch.equal(importance_log_weight(log_ratio, MASK, "token"), log_ratio)
    seq = importance_log_weight(log_ratio, MASK, "sequence")
    for i, n in enumerate(LENGTHS):
        assert seq[i, 0].item() == pytest.approx(sum(log_ratio[i, :n].tolist()) / max(n, 1))
    with pytest.raises(ValueError, match="token, sequence"):
        importance_log_weight(log_ratio, MASK, "segment")


# -- aggregations ----------------------------------------------------------------------------------------------
def loop_aggregate(name, loss, lengths, accum, max_len, n_items):
    """The aggregation with Python sums over the valid tokens only."""
    rows = [loss[i][:n] for i, n in enumerate(lengths)]
    if name == "grpo":
        value = sum(sum(r) / max(len(r), 1) for r in rows) / len(rows)
    elif name == "bnpo":
        value = sum(sum(r) for r in rows) / max(sum(lengths), 1)
    elif name == "dr_grpo":
        value = sum(sum(r) for r in rows) / (len(rows) * max_len)
    elif name == "dapo":
        return sum(sum(r) for r in rows) / n_items
    else:  # luspo
        value = sum(sum(r) for r in rows) / len(rows)
    return value / accum


@pytest.mark.parametrize("accum", [1, 3])
@pytest.mark.parametrize("name", list(AGGREGATIONS))
def test_aggregations_match_loops(name, accum):
    loss = torch.randn(5, 6, generator=G, dtype=torch.float64)
    loss[MASK == 0] = 1e6  # padding must never leak in
    got = aggregate(name, loss, MASK, accum_steps=accum, max_completion_length=8, num_items_in_batch=40)
    assert got.item() == pytest.approx(loop_aggregate(name, loss.tolist(), LENGTHS, accum, 8, 40))


def test_sequence_level_loss_is_broadcast_onto_its_tokens():
    per_seq = torch.tensor([[2.0], [-1.0], [0.5], [3.0], [7.0]], dtype=torch.float64)
    for name in AGGREGATIONS:
        got = aggregate(name, per_seq, MASK, max_completion_length=8)
        want = aggregate(name, per_seq.expand(-1, 6).clone(), MASK, max_completion_length=8)
        assert got.item() == pytest.approx(want.item())


def test_aggregation_validation():
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo, dapo, luspo"):
        aggregate("seq-mean", W, MASK)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate("dr_grpo", W, MASK)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        aggregate("dapo", W, MASK, accum_steps=2)
    with pytest.raises(ValueError, match="accum_steps"):
        aggregate("grpo", W, MASK, accum_steps=0)


# -- k3 --------------------------------------------------------------------------------------------------------
def test_k3_elementwise_nonnegative_and_zero_only_on_equal_logprobs():
    p = -torch.rand(4, 5, generator=G, dtype=torch.float64)
    q = -torch.rand(4, 5, generator=G, dtype=torch.float64)
    k3 = k3_kl(p, q)
    for i in range(4):
        for t in range(5):
            d = float(q[i, t] - p[i, t])
            assert k3[i, t].item() == pytest.approx(math.exp(d) - d - 1)
    assert torch.all(k3 >= 0) and torch.all(k3_kl(p, p) == 0)


def test_k3_is_an_unbiased_estimate_of_kl():
    """E_{y~π}[k3(y)] = KL(π ‖ π_ref) exactly (Σ_y π_ref(y) = 1): the expectation over a whole vocabulary."""
    logits = torch.randn(3, 11, generator=G, dtype=torch.float64)
    ref_logits = torch.randn(3, 11, generator=G, dtype=torch.float64)
    p, q = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    expectation = (p.exp() * k3_kl(p, q)).sum(-1)
    kl = (p.exp() * (p - q)).sum(-1)
    torch.testing.assert_close(expectation, kl)


def test_k3_gradient_flows_through_the_policy_only():
    p = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    q = torch.tensor([[-1.5, -1.0]], requires_grad=True)
    k3_kl(p, q).sum().backward()
    assert q.grad is None
    torch.testing.assert_close(p.grad, 1 - torch.exp(q.detach() - p.detach()))


def test_masked_token_mean_at_both_levels():
    x = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_token_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_token_mean(torch.tensor([[1.0], [3.0]]), mask).item() == pytest.approx(2.0)
