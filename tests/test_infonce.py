"""Tests for enigma_cli.core.infonce: brute-force references and the analytic MI of correlated Gaussians."""

import itertools
import math

import pytest
import torch

from enigma_cli.core import bootstrap_si, infonce_bounds, pointwise_critic, sami_loss, sufficiency_index


def _brute_force(S):
    """Row/column cross-entropies and top-1 hits by explicit Python loops over prompts, rows and columns."""
    S = S.double().tolist()
    if not isinstance(S[0][0], list):
        S = [S]
    rows, cols, hit_r, hit_c = [], [], [], []
    for M in S:
        k = len(M)
        for i in range(k):
            row = M[i]
            rows.append(-(row[i] - math.log(sum(math.exp(v) for v in row))))
            hit_r.append(float(all(row[i] > row[j] for j in range(k) if j != i)))
            col = [M[r][i] for r in range(k)]
            cols.append(-(col[i] - math.log(sum(math.exp(v) for v in col))))
            hit_c.append(float(all(col[i] > col[r] for r in range(k) if r != i)))
    return _mean(rows), _mean(cols), _mean(hit_r), _mean(hit_c), len(S[0])


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize("shape", [(5, 5), (3, 4, 4), (1, 2, 2)])
def test_matches_brute_force(shape):
    torch.manual_seed(0)
    S = torch.randn(*shape, dtype=torch.float64) * 3
    l_row, l_col, a_row, a_col, k = _brute_force(S)
    loss, stats = sami_loss(S)
    assert loss.item() == pytest.approx(0.5 * (l_row + l_col), abs=1e-12)
    assert stats["loss_row"] == pytest.approx(l_row, abs=1e-12)
    assert stats["loss_col"] == pytest.approx(l_col, abs=1e-12)
    b = infonce_bounds(S)
    assert b["k"] == k and b["log_k"] == pytest.approx(math.log(k))
    assert b["mi_row"] == pytest.approx(math.log(k) - l_row, abs=1e-12)
    assert b["mi_col"] == pytest.approx(math.log(k) - l_col, abs=1e-12)
    assert b["mi_sym"] == pytest.approx(math.log(k) - 0.5 * (l_row + l_col), abs=1e-12)
    assert b["acc_row"] == pytest.approx(a_row)  # continuous S: no ties
    assert b["acc_col"] == pytest.approx(a_col)
    for key in ("mi_row", "mi_col", "mi_sym", "acc_row", "acc_col", "log_k"):
        assert stats[key] == pytest.approx(b[key], abs=1e-12)


def test_orientation_and_ties():
    # Principle 0 scores both completions equally (a "generic" principle); principle 1 prefers its own.
    S = torch.tensor([[0.0, 0.0], [-10.0, 0.0]])
    b = infonce_bounds(S)
    assert b["acc_row"] == pytest.approx(0.75)  # row 0 is a 2-way tie (1/2), row 1 correct
    assert b["acc_col"] == pytest.approx(0.75)  # column 0 correct, column 1 a 2-way tie
    S2 = torch.tensor([[0.0, 0.0], [-10.0, 1.0]])
    assert infonce_bounds(S2)["acc_row"] == pytest.approx(0.75)
    assert infonce_bounds(S2)["acc_col"] == pytest.approx(1.0)
    # Transposing swaps the row and column statistics.
    torch.manual_seed(6)
    R = torch.randn(3, 5, 5)
    f, t = infonce_bounds(R), infonce_bounds(R.transpose(-1, -2))
    assert f["mi_row"] == pytest.approx(t["mi_col"]) and f["acc_row"] == pytest.approx(t["acc_col"])


def test_constant_matrix_is_chance():
    for k in (2, 3, 8):
        b = infonce_bounds(torch.zeros(k, k))
        assert b["mi_row"] == pytest.approx(0.0, abs=1e-6) and b["mi_col"] == pytest.approx(0.0, abs=1e-6)
        assert b["acc_row"] == pytest.approx(1.0 / k) and b["acc_col"] == pytest.approx(1.0 / k)
        assert sufficiency_index(torch.zeros(k, k))["si"] == pytest.approx(0.0, abs=1e-12)


def test_mi_never_exceeds_log_k():
    gen = torch.Generator().manual_seed(1)
    for k in (2, 4, 16, 64):
        log_k = math.log(k)
        cases = [
            torch.randn(8, k, k, generator=gen),
            torch.randn(8, k, k, generator=gen) * 1e4,
            torch.eye(k) * 1e6,  # perfect identification: the bound reaches log K
            torch.eye(k) * 1e6 + torch.randn(k, k, generator=gen),
            -torch.eye(k) * 1e3,  # adversarial: diagonal worst everywhere
            torch.full((k, k), -1e30).fill_diagonal_(0.0),
        ]
        for S in cases:
            for dtype in (torch.float32, torch.float64, torch.bfloat16):
                b = infonce_bounds(S.to(dtype))
                for key in ("mi_row", "mi_col", "mi_sym"):
                    assert b[key] <= log_k, (k, key, b[key])
                assert sufficiency_index(S.to(dtype))["si"] <= 1.0
        perfect = infonce_bounds(torch.eye(k) * 1e6)
        assert perfect["mi_sym"] == pytest.approx(log_k, abs=1e-6)
        assert perfect["acc_row"] == perfect["acc_col"] == 1.0
        assert infonce_bounds(-torch.eye(k) * 1e3)["mi_sym"] < -100


def test_sufficiency_index_decomposes():
    torch.manual_seed(2)
    S = torch.randn(7, 5, 5) + 2 * torch.eye(5)
    si = sufficiency_index(S)
    b = infonce_bounds(S)
    assert si["si"] == pytest.approx(b["mi_sym"] / math.log(5), abs=1e-6)
    assert si["per_principle"].shape == (5,) and si["per_prompt"].shape == (7,)
    assert si["per_principle"].mean().item() == pytest.approx(si["si"], abs=1e-12)
    assert si["per_prompt"].mean().item() == pytest.approx(si["si"], abs=1e-12)
    # Per-principle SI from the row-i and column-i cross-entropies, by brute force.
    for i in range(5):
        ce = []
        for M in S.double():
            ce.append(0.5 * ((M[i].logsumexp(0) - M[i, i]) + (M[:, i].logsumexp(0) - M[i, i])))
        expected = (math.log(5) - torch.stack(ce).mean().item()) / math.log(5)
        assert si["per_principle"][i].item() == pytest.approx(expected, abs=1e-9)


def test_pointwise_critic_leaves_column_loss_unchanged():
    torch.manual_seed(3)
    S = torch.randn(4, 6, 6, dtype=torch.float64)
    marginal = torch.randn(4, 6, dtype=torch.float64) * 5
    Sp = pointwise_critic(S, marginal)
    assert Sp[2, 1, 3].item() == pytest.approx((S[2, 1, 3] - marginal[2, 3]).item())
    before, after = infonce_bounds(S), infonce_bounds(Sp)
    assert after["loss_col"] == pytest.approx(before["loss_col"], abs=1e-12)
    assert after["acc_col"] == before["acc_col"]
    assert abs(after["loss_row"] - before["loss_row"]) > 1e-3
    # Unbatched form.
    assert pointwise_critic(S[0], marginal[0]).shape == (6, 6)
    with pytest.raises(ValueError):
        pointwise_critic(S, marginal[0])


def test_gradient_flows():
    torch.manual_seed(4)
    S = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    loss, _ = sami_loss(S)
    loss.backward()
    assert S.grad is not None and torch.isfinite(S.grad).all() and S.grad.abs().sum() > 0
    # Raising a diagonal entry lowers the loss.
    assert (torch.diagonal(S.grad, dim1=-2, dim2=-1) < 0).all()
    assert torch.autograd.gradcheck(
        lambda x: sami_loss(x)[0], (torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True),)
    )
    # Half-precision input still yields a gradient in the input's dtype.
    Sh = torch.randn(4, 4, dtype=torch.bfloat16, requires_grad=True)
    sami_loss(Sh)[0].backward()
    assert Sh.grad is not None and Sh.grad.dtype == torch.bfloat16


def test_invalid_shapes():
    with pytest.raises(ValueError, match="K >= 2"):
        infonce_bounds(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="K >= 2"):
        sami_loss(torch.zeros(3, 1, 1))
    with pytest.raises(ValueError):
        sufficiency_index(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        infonce_bounds(torch.zeros(2, 2, 2, 2))


def _gaussian_critic(K, B, d, rho, gen):
    """S[b, i, j] = log p(y_j | x_i) for X, Y ∈ R^d with per-dimension correlation rho, and log p(y_j)."""
    x = torch.randn(B, K, d, dtype=torch.float64, generator=gen)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(B, K, d, dtype=torch.float64, generator=gen)
    var = 1 - rho**2
    S = -((y.unsqueeze(1) - rho * x.unsqueeze(2)) ** 2).sum(-1) / (2 * var) - 0.5 * d * math.log(
        2 * math.pi * var
    )
    marginal = -(y**2).sum(-1) / 2 - 0.5 * d * math.log(2 * math.pi)
    return S, marginal


def test_gaussian_infonce_bound_below_analytic_mi_and_tight_at_large_k():
    d = 4
    rho = math.sqrt(1 - math.exp(-1))  # −(d/2)·log(1−ρ²) = 2 nats
    mi = -(d / 2) * math.log(1 - rho**2)
    assert mi == pytest.approx(2.0)
    gen = torch.Generator().manual_seed(0)
    bounds = []
    for K, B in [(4, 2000), (16, 500), (64, 100), (256, 20)]:
        S, marginal = _gaussian_critic(K, B, d, rho, gen)
        # log p(y|x) − log p(y) is the optimal critic for both directions; log p(y|x) alone only for columns.
        Sp = pointwise_critic(S, marginal)
        per_prompt = sufficiency_index(Sp)["per_prompt"] * math.log(K)  # Î_sym of each prompt
        est = per_prompt.mean().item()
        se = per_prompt.std().item() / math.sqrt(B)
        assert est <= mi + 4 * se + 1e-3, (K, est, se)
        assert est <= math.log(K)
        raw = infonce_bounds(S)
        assert raw["mi_row"] <= mi + 0.05 and raw["mi_col"] <= mi + 0.05
        assert raw["mi_col"] == pytest.approx(infonce_bounds(Sp)["mi_col"], abs=1e-9)
        bounds.append(est)
    assert all(a < b for a, b in itertools.pairwise(bounds)), bounds
    assert bounds[-1] >= 0.9 * mi, bounds
    # At small K the bound is capped by log K: it sits close to log 4 ≈ 1.386 from below.
    assert bounds[0] <= math.log(4)


def test_bootstrap_deterministic_and_contains_estimate():
    torch.manual_seed(5)
    S = torch.randn(40, 4, 4) + 1.5 * torch.eye(4)
    si = sufficiency_index(S)
    lo, hi = bootstrap_si(si["per_prompt"], n_boot=500, seed=7)
    assert (lo, hi) == bootstrap_si(si["per_prompt"], n_boot=500, seed=7)
    assert (lo, hi) == bootstrap_si(si["per_prompt"].tolist(), n_boot=500, seed=7)
    assert lo < si["si"] < hi
    assert (lo, hi) != bootstrap_si(si["per_prompt"], n_boot=500, seed=8)
    lo50, hi50 = bootstrap_si(si["per_prompt"], n_boot=500, seed=7, level=0.5)
    assert lo <= lo50 < hi50 <= hi
    assert bootstrap_si([0.3], n_boot=10) == pytest.approx((0.3, 0.3))
    with pytest.raises(ValueError):
        bootstrap_si([], n_boot=10)
    with pytest.raises(ValueError):
        bootstrap_si([0.1, 0.2], level=1.0)
