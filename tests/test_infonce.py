"""Tests for enigma_cli.core.infonce: brute-force references and the analytic MI of correlated Gaussians."""

import itertools
import math

import pytest
import torch

from enigma_cli.core import bootstrap_si, infonce_bounds, pointwise_critic, sami_loss, sufficiency_index
from enigma_cli.core.infonce import posterior_critic, principle_posterior, sum_critic


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


# ------------------------------------------------------------------------------- the sum-token critic


def _toy_model(k, vocab, seed):
    """K principles, each an i.i.d. token distribution p_i over `vocab` tokens (a unigram language model)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(k, vocab, dtype=torch.float64, generator=gen) * 1.5, dim=-1)


def test_sum_critic_column_softmax_is_the_bayes_posterior():
    """Independent reference: p(c_i | y) = Π_t p_i(y_t) / Σ_k Π_t p_k(y_t), by products in plain Python."""
    k, vocab = 3, 5
    p = _toy_model(k, vocab, seed=0)
    gen = torch.Generator().manual_seed(1)
    B = 4
    lengths = torch.randint(1, 9, (B, k), generator=gen)
    seqs = [[torch.randint(0, vocab, (int(lengths[b, j]),), generator=gen).tolist() for j in range(k)]
            for b in range(B)]
    # What score_pairs returns: the mean token log-prob of completion j under principle i.
    S_mean = torch.tensor([[[sum(math.log(p[i, t]) for t in seqs[b][j]) / len(seqs[b][j]) for j in range(k)]
                            for i in range(k)] for b in range(B)], dtype=torch.float64)
    S_sum = sum_critic(S_mean, lengths)
    post = principle_posterior(S_sum)
    for b in range(B):
        for j in range(k):
            lik = [math.prod(float(p[i, t]) for t in seqs[b][j]) for i in range(k)]
            for i in range(k):
                assert post[b, i, j].item() == pytest.approx(lik[i] / sum(lik), rel=1e-9)
    # The column loss of the sum critic is the mean −log posterior of the true principle.
    ce = [-math.log(post[b, j, j].item()) for b in range(B) for j in range(k)]
    assert infonce_bounds(S_sum)["loss_col"] == pytest.approx(sum(ce) / len(ce), abs=1e-12)
    # Unbatched form, and the mean critic's posterior differs (it ignores how long each completion is).
    assert torch.allclose(sum_critic(S_mean[0], lengths[0]), S_sum[0])
    assert not torch.allclose(principle_posterior(S_mean), post)


def test_sum_critic_column_bound_is_the_mutual_information_when_the_model_samples():
    """Completions sampled from the scoring model: E[Î_col(S_sum)] = I(C; Y) exactly, computed by enumeration.

    The mean-token critic on the same samples gives a strictly lower (looser) bound.
    """
    k, vocab, length = 3, 3, 3
    p = _toy_model(k, vocab, seed=2)
    seqs = list(itertools.product(range(vocab), repeat=length))
    lik = torch.tensor([[math.prod(float(p[i, t]) for t in y) for y in seqs] for i in range(k)], dtype=torch.float64)
    marg = lik.mean(dim=0)
    mi = float(sum((lik[i, n] / k) * math.log(lik[i, n] / marg[n]) for i in range(k) for n in range(len(seqs))))
    assert 0.05 < mi < math.log(k) - 0.05  # an informative but not saturated case
    gen = torch.Generator().manual_seed(3)
    B = 40000
    idx = torch.stack([torch.multinomial(lik[j], B, replacement=True, generator=gen) for j in range(k)], dim=1)
    logl = lik.log()  # [K, n_seqs]
    S_sum = logl[:, idx].permute(1, 0, 2)  # [B, K(principle i), K(completion j)]
    lengths = torch.full((B, k), float(length), dtype=torch.float64)
    S_mean = S_sum / length
    assert torch.allclose(sum_critic(S_mean, lengths), S_sum)
    est = infonce_bounds(S_sum)["mi_col"]
    assert est == pytest.approx(mi, abs=0.01)
    assert infonce_bounds(S_mean)["mi_col"] < mi - 0.05
    # Centred on the mixture, the rows use the optimal critic and rise far above the raw rows. They are no lower
    # bound, though: a row's negatives come from the *other* K − 1 principles, not from the marginal, which makes
    # them easier to reject, and the row estimate overshoots I (here by about 0.06 nats). The column candidates are
    # all K principles (the whole prior), so Î_col stays a bound for any critic and is exact for this one.
    post = infonce_bounds(posterior_critic(S_sum))
    assert post["mi_col"] == pytest.approx(est, abs=1e-9)
    assert post["mi_row"] > infonce_bounds(S_sum)["mi_row"] + 0.05
    assert post["mi_row"] > mi + 0.03


def test_posterior_critic_is_log_k_plus_the_log_posterior():
    torch.manual_seed(5)
    S = torch.randn(3, 4, 4, dtype=torch.float64) * 4
    post = posterior_critic(S)
    for b in range(3):
        for j in range(4):
            z = sum(math.exp(S[b, r, j].item()) for r in range(4))
            for i in range(4):
                expected = math.log(4) + S[b, i, j].item() - math.log(z)
                assert post[b, i, j].item() == pytest.approx(expected, abs=1e-12)
    before, after = infonce_bounds(S), infonce_bounds(post)
    assert after["loss_col"] == pytest.approx(before["loss_col"], abs=1e-12) and after["acc_col"] == before["acc_col"]
    assert torch.allclose(principle_posterior(post), principle_posterior(S))
    assert posterior_critic(S[0]).shape == (4, 4)
    # A critic that depends on the completion only (a placebo whose completions differ in length): the raw rows
    # fall below chance, the centred matrix is all zeros and scores chance exactly.
    col_only = torch.tensor([[-3.0, -40.0, -9.0]]).expand(3, 3)
    assert infonce_bounds(col_only)["mi_row"] < -1
    assert torch.allclose(posterior_critic(col_only), torch.zeros(3, 3), atol=1e-5)
    assert sufficiency_index(posterior_critic(col_only))["si"] == pytest.approx(0.0, abs=1e-7)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: posterior_critic(t), (x,))


def test_sum_critic_checks_and_empty_completions():
    S = torch.randn(2, 3, 3)
    with pytest.raises(ValueError, match="shape"):
        sum_critic(S, torch.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        sum_critic(S, -torch.ones(2, 3))
    # An empty completion: every principle explains it equally well (a uniform column).
    lengths = torch.tensor([[0, 2, 3], [1, 1, 1]])
    post = principle_posterior(sum_critic(S, lengths))
    assert torch.allclose(post[0, :, 0], torch.full((3,), 1 / 3))
    assert torch.allclose(post.sum(dim=-2), torch.ones(2, 3))
