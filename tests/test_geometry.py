"""Tests for enigma_cli.core.geometry against known manifolds, invariances and scipy / torch references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import subspace_angles
from scipy.special import rel_entr

from enigma_cli.core import (
    anisotropy,
    effective_rank,
    fisher_rao_distance,
    kl_divergence,
    linear_cka,
    participation_ratio,
    principal_angles,
    twonn_dimension,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _orthonormal(rows, cols, gen):
    """A [rows, cols] matrix with orthonormal columns."""
    return torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=gen)).Q


# --- TwoNN -------------------------------------------------------------------------------------------------------


def test_twonn_swiss_roll_is_two():
    g = _gen(0)
    n = 2000
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, dtype=torch.float64, generator=g))
    h = 21 * torch.rand(n, dtype=torch.float64, generator=g)
    X = torch.stack([t * torch.cos(t), h, t * torch.sin(t)], dim=1)
    assert twonn_dimension(X) == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize("d", [5, 10])
def test_twonn_gaussian_and_linear_embeddings(d):
    g = _gen(d)
    G = torch.randn(2000, d, dtype=torch.float64, generator=g)
    assert twonn_dimension(G) == pytest.approx(d, rel=0.15)
    # Isometric embedding in R^64 leaves every distance, hence the estimate, unchanged.
    Q = _orthonormal(64, d, g)
    assert twonn_dimension(G @ Q.T) == pytest.approx(twonn_dimension(G), rel=1e-9)
    # A generic full-rank linear map into R^64 (in float32) still gives ≈ d.
    A = torch.randn(d, 64, dtype=torch.float64, generator=g)
    assert twonn_dimension((G @ A).float()) == pytest.approx(d, rel=0.15)


def test_twonn_drops_duplicates_and_validates():
    g = _gen(1)
    G = torch.randn(1000, 3, dtype=torch.float64, generator=g)
    with_dupes = torch.cat([G, G[:100]])  # 200 points now have r1 = 0
    est = twonn_dimension(with_dupes)
    assert math.isfinite(est) and est == pytest.approx(3.0, rel=0.15)
    with pytest.raises(ValueError):
        twonn_dimension(G, discard_fraction=1.0)
    with pytest.raises(ValueError):
        twonn_dimension(G[:2])


# --- CKA ---------------------------------------------------------------------------------------------------------


def _cka_reference(X, Y):
    X = X.numpy() - X.numpy().mean(0)
    Y = Y.numpy() - Y.numpy().mean(0)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


@pytest.mark.parametrize("n, d1, d2", [(200, 16, 24), (30, 100, 80)])  # feature form and Gram form
def test_cka_invariances_and_reference(n, d1, d2):
    g = _gen(2)
    X = torch.randn(n, d1, dtype=torch.float64, generator=g)
    Q = _orthonormal(d1, d1, g)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X @ Q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, 7.5 * X @ Q + 3.0) == pytest.approx(1.0, abs=1e-10)  # scaling and a shift
    Y = torch.randn(n, d2, dtype=torch.float64, generator=g)
    assert linear_cka(X, Y) == pytest.approx(_cka_reference(X, Y), rel=1e-10)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), rel=1e-12)
    # A partial relation lies strictly between the independent level and 1.
    Z = torch.cat([X, Y], dim=1)
    assert linear_cka(X, Y) < linear_cka(X, Z) < 1.0


def test_cka_low_for_independent_features():
    g = _gen(3)
    X = torch.randn(2000, 10, generator=g)
    Y = torch.randn(2000, 12, generator=g)
    assert linear_cka(X, Y) < 0.05
    assert math.isnan(linear_cka(torch.ones(10, 3), Y[:10]))
    with pytest.raises(ValueError):
        linear_cka(X, Y[:10])


# --- Effective rank and participation ratio ----------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_rank_and_pr_of_rank_r(r):
    g = _gen(r)
    n, d = 60, 20
    # Centred matrix with r equal singular values: orthonormal, zero-mean columns times orthonormal rows.
    U = torch.randn(n, r, dtype=torch.float64, generator=g)
    U = torch.linalg.qr(U - U.mean(0)).Q
    V = _orthonormal(d, r, g)
    X = 3.0 * U @ V.T + torch.randn(1, d, dtype=torch.float64, generator=g)  # a common offset is centred away
    assert effective_rank(X) == pytest.approx(r, rel=1e-9)
    assert participation_ratio(X) == pytest.approx(r, rel=1e-9)
    # Generic rank-r matrix: both measures lie in [1, r].
    W = torch.randn(n, r, dtype=torch.float64, generator=g) @ torch.randn(
        r, d, dtype=torch.float64, generator=g
    )
    for value in (effective_rank(W), participation_ratio(W)):
        assert 1.0 - 1e-9 <= value <= r + 1e-9


def test_effective_rank_reference_and_edge_cases():
    g = _gen(4)
    X = torch.randn(50, 8, generator=g) * torch.linspace(0.1, 3.0, 8)
    s = np.linalg.svd(X.double().numpy() - X.double().numpy().mean(0), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(X) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
    lam = s**2
    assert participation_ratio(X) == pytest.approx(float(lam.sum() ** 2 / (lam**2).sum()), rel=1e-6)
    assert effective_rank(torch.ones(5, 3)) == 0.0 and participation_ratio(torch.ones(5, 3)) == 0.0


# --- Principal angles --------------------------------------------------------------------------------------------


def test_principal_angles_same_and_orthogonal_subspaces():
    g = _gen(5)
    d, k, n = 30, 4, 200
    basis = _orthonormal(d, 2 * k, g)
    B1, B2 = basis[:, :k], basis[:, k:]
    scales = torch.tensor([8.0, 6.0, 4.0, 3.0], dtype=torch.float64)
    X = torch.randn(n, k, dtype=torch.float64, generator=g) * scales @ B1.T
    R = _orthonormal(k, k, g)  # same subspace, rotated basis
    Y = torch.randn(n, k, dtype=torch.float64, generator=g) * scales @ (B1 @ R).T
    same = principal_angles(X, Y, k)
    assert same.shape == (k,) and same.max().item() < 1e-6
    Z = torch.randn(n, k, dtype=torch.float64, generator=g) * scales @ B2.T
    assert torch.allclose(
        principal_angles(X, Z, k), torch.full((k,), math.pi / 2, dtype=torch.float64), atol=1e-9
    )


def test_principal_angles_match_scipy_and_ascend():
    g = _gen(6)
    X = torch.randn(100, 12, dtype=torch.float64, generator=g) * torch.linspace(1, 5, 12, dtype=torch.float64)
    Y = X @ (torch.eye(12, dtype=torch.float64) + 0.3 * torch.randn(12, 12, dtype=torch.float64, generator=g))
    angles = principal_angles(X, Y, 3)
    assert torch.all(angles[1:] >= angles[:-1])
    ux = np.linalg.svd(X.numpy() - X.numpy().mean(0), full_matrices=False)[2][:3].T
    uy = np.linalg.svd(Y.numpy() - Y.numpy().mean(0), full_matrices=False)[2][:3].T
    np.testing.assert_allclose(angles.numpy(), np.sort(subspace_angles(ux, uy)), atol=1e-10)
    with pytest.raises(ValueError):
        principal_angles(X, Y[:, :5], 3)
    with pytest.raises(ValueError):
        principal_angles(X, Y, 13)


# --- Anisotropy --------------------------------------------------------------------------------------------------


def test_anisotropy():
    g = _gen(7)
    v = torch.randn(64, generator=g)
    same_dir = torch.rand(20, 1, generator=g).add(0.1) * v
    assert anisotropy(same_dir) == pytest.approx(1.0, abs=1e-9)
    random = torch.randn(300, 512, generator=g)
    assert abs(anisotropy(random)) < 0.01
    X = torch.randn(15, 6, dtype=torch.float64, generator=g)
    U = X / X.norm(dim=1, keepdim=True)
    C = U @ U.T
    brute = (C.sum() - C.diagonal().sum()) / (15 * 14)
    assert anisotropy(X) == pytest.approx(brute.item(), abs=1e-12)
    assert anisotropy(torch.cat([X, torch.zeros(2, 6, dtype=torch.float64)])) == pytest.approx(brute.item())
    assert anisotropy(torch.stack([v, -v])) == pytest.approx(-1.0)


# --- Fisher–Rao and KL -------------------------------------------------------------------------------------------


def test_fisher_rao_identity_disjoint_symmetry():
    g = _gen(8)
    logits = torch.randn(3, 5, 50, generator=g)
    d, mean = fisher_rao_distance(logits, logits.clone())
    assert d.shape == (3, 5) and d.abs().max().item() < 1e-6 and abs(mean) < 1e-6
    # Shifting logits by a constant leaves the distribution, hence the distance, unchanged.
    assert fisher_rao_distance(logits, logits + 4.0)[0].abs().max().item() < 1e-5
    ninf = float("-inf")
    p = torch.tensor([0.0, 1.0, ninf, ninf])
    q = torch.tensor([ninf, ninf, 2.0, -1.0])
    assert fisher_rao_distance(p, q)[0].item() == pytest.approx(math.pi, abs=1e-6)
    very_neg = torch.tensor([[0.0, -1e4], [-1e4, 0.0]])
    assert fisher_rao_distance(very_neg[0], very_neg[1])[1] == pytest.approx(math.pi, abs=1e-6)
    other = torch.randn(3, 5, 50, generator=g)
    d_pq, _ = fisher_rao_distance(logits, other)
    d_qp, _ = fisher_rao_distance(other, logits)
    assert torch.allclose(d_pq, d_qp, atol=1e-6)
    assert (d_pq > 0).all() and (d_pq <= math.pi).all()


def test_fisher_rao_matches_arccos_formula_and_mask():
    g = _gen(9)
    lp = torch.randn(4, 6, 30, dtype=torch.float64, generator=g)
    lq = torch.randn(4, 6, 30, dtype=torch.float64, generator=g)
    bc = (lp.softmax(-1) * lq.softmax(-1)).sqrt().sum(-1)
    ref = 2 * torch.arccos(bc.clamp(0, 1))
    d, mean = fisher_rao_distance(lp, lq)
    assert torch.allclose(d, ref, atol=1e-10) and mean == pytest.approx(ref.mean().item())
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :3] = True
    _, masked = fisher_rao_distance(lp, lq, mask=mask)
    assert masked == pytest.approx(ref[:, :3].mean().item())
    # Nearly equal distributions: the small distance is resolved (arccos(BC) would round to 0 in float32).
    eps = 1e-5
    small, _ = fisher_rao_distance(lp[0, 0].float(), (lp[0, 0] + eps * lq[0, 0]).float())
    exact, _ = fisher_rao_distance(lp[0, 0], lp[0, 0] + eps * lq[0, 0])
    assert exact.item() > 0 and small.item() == pytest.approx(exact.item(), rel=1e-2)
    with pytest.raises(ValueError):
        fisher_rao_distance(lp, lq[..., :10])


def test_kl_matches_torch_and_scipy():
    g = _gen(10)
    lp = torch.randn(2, 7, 40, generator=g) * 2
    lq = torch.randn(2, 7, 40, generator=g) * 2
    kl, mean = kl_divergence(lp, lq)
    ref = F.kl_div(lq.log_softmax(-1), lp.log_softmax(-1), reduction="none", log_target=True).sum(-1)
    assert kl.shape == (2, 7) and torch.allclose(kl, ref, atol=1e-5)
    sp = rel_entr(lp.double().softmax(-1).numpy(), lq.double().softmax(-1).numpy()).sum(-1)
    np.testing.assert_allclose(kl.double().numpy(), sp, rtol=1e-4, atol=1e-6)
    assert mean == pytest.approx(float(sp.mean()), rel=1e-4)
    assert kl_divergence(lp, lp)[0].abs().max().item() < 1e-5
    # Zeros in p contribute nothing; a zero in q where p > 0 gives +inf, which a mask can leave out.
    ninf = float("-inf")
    p = torch.tensor([[0.0, ninf, 1.0], [0.0, 0.0, 0.0]])
    q = torch.tensor([[0.5, 0.0, 1.0], [ninf, 0.0, 0.0]])
    kl2, _ = kl_divergence(p, q)
    expected0 = rel_entr(torch.softmax(p[0], -1).numpy(), torch.softmax(q[0], -1).numpy()).sum()
    assert kl2[0].item() == pytest.approx(float(expected0), rel=1e-5)
    assert math.isinf(kl2[1].item())
    assert kl_divergence(p, q, mask=torch.tensor([True, False]))[1] == pytest.approx(
        float(expected0), rel=1e-5
    )


def test_twonn_ignores_exact_duplicates():
    """Duplicated rows (as at an embedding layer, where equal tokens share a vector) must not turn the estimate
    into NaN or inf: the answer equals the one on the distinct points."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(800, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 32, generator=g, dtype=torch.float64)
    dup = torch.cat([X, X[:300], X[:50]])
    assert math.isfinite(twonn_dimension(dup))
    assert twonn_dimension(dup) == pytest.approx(twonn_dimension(X), rel=1e-9)
