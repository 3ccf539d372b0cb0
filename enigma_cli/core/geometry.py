"""Geometry of hidden states and next-token distributions (method.md §6).

The maths
---------
For a state matrix X ∈ R^{n×d} (n points, d features) with centred version X̃ = X − 1 x̄ᵀ and singular values σ:

- effective rank [1]:        erank(X) = exp(H(p)),  p_i = σ_i / Σ_j σ_j,  H(p) = −Σ p_i log p_i
- participation ratio:       PR(X) = (Σ λ_i)² / Σ λ_i²,  λ_i = σ_i² / (n − 1) the covariance eigenvalues
- TwoNN intrinsic dimension [2]: μ_i = r_2(i) / r_1(i) (second / first nearest-neighbour distance) is Pareto
  distributed, F(μ) = 1 − μ^{−d}, so −log(1 − F(μ)) = d·log μ; d is the slope of a least-squares line through the
  origin of −log(1 − F_emp(μ_(i))) against log μ_(i), F_emp(μ_(i)) = i/N over the sorted μ.
- linear CKA [3]:            CKA(X, Y) = ‖Ỹᵀ X̃‖_F² / (‖X̃ᵀ X̃‖_F ‖Ỹᵀ Ỹ‖_F)
- principal angles [4]:      θ_i = arccos σ_i(U_Xᵀ U_Y), U_X, U_Y the top-k right singular vectors of X̃, Ỹ
- anisotropy:                mean_{i≠j} cos(x_i, x_j)
- Fisher–Rao distance between categorical p, q:  d_FR = 2 arccos(Σ_v √(p_v q_v)) ∈ [0, π]
- Kullback–Leibler:          KL(p‖q) = Σ_v p_v (log p_v − log q_v)

References
----------
.. [1] O. Roy, M. Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
.. [2] E. Facco, M. d'Errico, A. Rodriguez, A. Laio, "Estimating the intrinsic dimension of datasets by a minimal
   neighborhood information", Scientific Reports 7, 12140, 2017.
.. [3] S. Kornblith, M. Norouzi, H. Lee, G. Hinton, "Similarity of Neural Network Representations Revisited",
   ICML 2019.
.. [4] Å. Björck, G. H. Golub, "Numerical methods for computing angles between linear subspaces", Math. Comp. 27,
   1973.

Choices and deviations
----------------------
- State-matrix statistics are computed in float64 on the input's device and returned as Python floats.
- A matrix with no variance has effective rank and participation ratio 0 (not the exp(0) = 1 of an empty
  entropy); CKA with a constant input is NaN.
- TwoNN drops points whose nearest neighbour is at distance 0 (duplicates: μ undefined), always drops the largest
  μ (F_emp = 1 gives −log 0) and then the top ``discard_fraction`` of the μ, as Facco et al. do against outliers.
- Principal angles use cosines for large angles and sines of the residual (I − U_X U_Xᵀ) U_Y for small ones
  (Björck–Golub; SciPy's ``subspace_angles``), so nearly identical subspaces give angles near 0 rather than the
  ~1e-8 floor of arccos(1 − ε).
- Anisotropy ignores all-zero rows (their cosine is undefined).
- Fisher–Rao is evaluated as 4·arcsin(½‖√p − √q‖₂), algebraically equal to 2·arccos(BC) because
  1 − BC = ½‖√p − √q‖², but accurate for nearly equal distributions even in float32 (arccos loses half the digits
  near BC = 1). Clamping the arcsin argument to [0, 1/√2] is clamping BC to [0, 1]. Distributions are computed in
  at least float32 (bf16/fp16 logits are upcast); −inf logits are allowed (zero probability).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "anisotropy",
    "effective_rank",
    "fisher_rao_distance",
    "kl_divergence",
    "linear_cka",
    "participation_ratio",
    "principal_angles",
    "twonn_dimension",
]


def _matrix(X: torch.Tensor, name: str = "X", min_rows: int = 1) -> torch.Tensor:
    X = torch.as_tensor(X)
    if X.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [n, d] matrix, got shape {tuple(X.shape)}")
    if X.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {X.shape[0]}")
    return X.detach().to(torch.float64)


def _centred(X: torch.Tensor) -> torch.Tensor:
    return X - X.mean(dim=0, keepdim=True)


def effective_rank(X: torch.Tensor) -> float:
    r"""Effective rank of the centred state matrix (Roy & Vetterli [1]).

    .. math::

        \operatorname{erank}(X) = \exp\Big(-\sum_i p_i \log p_i\Big), \quad p_i = \frac{\sigma_i}{\sum_j \sigma_j}

    with σ the singular values of X − mean(X). Equals r for a rank-r matrix with equal singular values and lies in
    [1, min(n − 1, d)] otherwise; 0 for a matrix with no variance.

    Parameters
    ----------
    X : torch.Tensor
        Shape [n, d].

    Returns
    -------
    float
    """
    s = torch.linalg.svdvals(_centred(_matrix(X)))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def participation_ratio(X: torch.Tensor) -> float:
    r"""Participation ratio of the covariance spectrum of the centred X.

    .. math::

        PR(X) = \frac{(\sum_i \lambda_i)^2}{\sum_i \lambda_i^2}

    with λ the covariance eigenvalues (σ²/(n − 1)); the 1/(n − 1) cancels. r for r equal eigenvalues; 0 for a
    matrix with no variance.

    Parameters
    ----------
    X : torch.Tensor
        Shape [n, d].

    Returns
    -------
    float
    """
    lam = torch.linalg.svdvals(_centred(_matrix(X))).square()
    denom = lam.square().sum()
    if denom <= 0:
        return 0.0
    return float(lam.sum().square() / denom)


def _two_nearest(X: torch.Tensor, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances to the first and second nearest neighbours (excluding self), computed in row blocks."""
    n = X.shape[0]
    r1 = torch.empty(n, dtype=X.dtype, device=X.device)
    r2 = torch.empty(n, dtype=X.dtype, device=X.device)
    sq = X.square().sum(dim=1)
    for start in range(0, n, block):
        stop = min(n, start + block)
        # Squared distances by expansion, then clamp: exact enough in float64 for nearest-neighbour ranking.
        d2 = (sq[start:stop, None] + sq[None, :] - 2.0 * X[start:stop] @ X.T).clamp_min_(0.0)
        rows = torch.arange(start, stop, device=X.device)
        d2[rows - start, rows] = math.inf
        two = torch.topk(d2, 2, dim=1, largest=False).values
        r1[start:stop] = two[:, 0].sqrt()
        r2[start:stop] = two[:, 1].sqrt()
    return r1, r2


def twonn_dimension(X: torch.Tensor, discard_fraction: float = 0.1) -> float:
    r"""TwoNN intrinsic dimension (Facco et al. [2]).

    For each point, μ_i = r_2 / r_1. Sorting the N valid μ ascending and setting F_emp(μ_(i)) = i/N, the estimate is
    the least-squares slope through the origin

    .. math::

        \hat d = \frac{\sum_i x_i y_i}{\sum_i x_i^2}, \quad x_i = \log \mu_{(i)}, \quad
        y_i = -\log\big(1 - F_{emp}(\mu_{(i)})\big)

    over the points kept after discarding the largest ``discard_fraction`` of the μ (and always the very largest,
    whose F_emp = 1). Exact duplicate points are merged before the neighbour search (their r_1 = 0 would be
    lost to rounding in the distance expansion and give μ = ∞), and any remaining r_1 = 0 is dropped.

    Parameters
    ----------
    X : torch.Tensor
        Shape [n, d], n ≥ 3.
    discard_fraction : float
        Fraction of the largest μ left out of the fit, in [0, 1).

    Returns
    -------
    float
        The estimated dimension; NaN if fewer than two usable points remain.
    """
    if not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"discard_fraction must lie in [0, 1), got {discard_fraction}")
    X = torch.unique(_matrix(X, min_rows=3), dim=0)
    if X.shape[0] < 3:
        return float("nan")
    r1, r2 = _two_nearest(X)
    keep = r1 > 0
    mu = (r2[keep] / r1[keep]).sort().values
    n = mu.numel()
    n_fit = min(n - 1, math.floor(n * (1.0 - discard_fraction)))
    if n_fit < 2:
        return float("nan")
    x = mu[:n_fit].log()
    f = torch.arange(1, n_fit + 1, dtype=torch.float64, device=mu.device) / n
    y = -torch.log1p(-f)
    denom = x.square().sum()
    if denom <= 0:
        return float("nan")
    return float((x * y).sum() / denom)


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    r"""Linear centred kernel alignment (Kornblith et al. [3]).

    .. math::

        CKA(X, Y) = \frac{\lVert \tilde Y^\top \tilde X \rVert_F^2}
                         {\lVert \tilde X^\top \tilde X \rVert_F \, \lVert \tilde Y^\top \tilde Y \rVert_F}

    with X̃, Ỹ the column-centred matrices. Invariant to orthogonal transforms and isotropic scaling of either
    input; in [0, 1]. Uses the feature form or, when cheaper (n < d), the equivalent Gram form
    ⟨X̃X̃ᵀ, ỸỸᵀ⟩_F / (‖X̃X̃ᵀ‖_F ‖ỸỸᵀ‖_F).

    Parameters
    ----------
    X, Y : torch.Tensor
        Shapes [n, d1] and [n, d2] (same n, rows paired).

    Returns
    -------
    float
        NaN if either input has no variance.
    """
    X = _centred(_matrix(X, "X", 2))
    Y = _centred(_matrix(Y, "Y", 2).to(X.device))
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows, got {X.shape[0]} and {Y.shape[0]}")
    n, d1 = X.shape
    d2 = Y.shape[1]
    if n * n * (d1 + d2) < n * (d1 * d2 + d1 * d1 + d2 * d2):
        kx, ky = X @ X.T, Y @ Y.T
        num = (kx * ky).sum()
        den = torch.linalg.matrix_norm(kx) * torch.linalg.matrix_norm(ky)
    else:
        num = (Y.T @ X).square().sum()
        den = torch.linalg.matrix_norm(X.T @ X) * torch.linalg.matrix_norm(Y.T @ Y)
    if den <= 0:
        return float("nan")
    return float(num / den)


def principal_angles(X: torch.Tensor, Y: torch.Tensor, k: int) -> torch.Tensor:
    r"""Principal angles between the top-k PCA subspaces of X and Y.

    With U_X, U_Y ∈ R^{d×k} the top-k right singular vectors of the centred matrices,

    .. math::

        \cos\theta_i = \sigma_i(U_X^\top U_Y), \qquad \sin\theta_i = \sigma_{k+1-i}\big((I - U_X U_X^\top) U_Y\big)

    and each angle is taken from the better-conditioned of the two (Björck & Golub [4]).

    Parameters
    ----------
    X, Y : torch.Tensor
        Shapes [n1, d] and [n2, d] (same d; the rows need not be paired).
    k : int
        Subspace dimension, 1 ≤ k ≤ min(n1, n2, d).

    Returns
    -------
    torch.Tensor
        float64 tensor of shape [k], angles in radians in [0, π/2], ascending.
    """
    X = _centred(_matrix(X, "X"))
    Y = _centred(_matrix(Y, "Y").to(X.device))
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must have the same number of columns, got {X.shape[1]} and {Y.shape[1]}")
    if not 1 <= k <= min(X.shape[0], Y.shape[0], X.shape[1]):
        raise ValueError(f"k must lie in [1, {min(X.shape[0], Y.shape[0], X.shape[1])}], got {k}")
    ux = torch.linalg.svd(X, full_matrices=False).Vh[:k].T  # [d, k]
    uy = torch.linalg.svd(Y, full_matrices=False).Vh[:k].T
    cos = torch.linalg.svdvals(ux.T @ uy).clamp(0.0, 1.0)  # descending
    sin = torch.linalg.svdvals(uy - ux @ (ux.T @ uy)).clamp(0.0, 1.0).flip(0)  # ascending
    angles = torch.where(cos.square() < 0.5, torch.arccos(cos), torch.arcsin(sin))
    return angles.sort().values


def anisotropy(X: torch.Tensor) -> float:
    r"""Mean pairwise cosine similarity over distinct rows.

    .. math::

        A(X) = \frac{1}{n(n-1)} \sum_{i \ne j} \frac{x_i^\top x_j}{\lVert x_i\rVert \lVert x_j\rVert}
             = \frac{\lVert \sum_i u_i \rVert^2 - n}{n(n-1)}, \quad u_i = x_i / \lVert x_i \rVert

    computed in O(nd). Not centred: 1 when all rows share one direction, ≈ 0 for random isotropic rows. All-zero
    rows are ignored.

    Parameters
    ----------
    X : torch.Tensor
        Shape [n, d], at least two non-zero rows.

    Returns
    -------
    float
    """
    X = _matrix(X)
    norms = X.norm(dim=1)
    X = X[norms > 0] / norms[norms > 0, None]
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"anisotropy needs at least two non-zero rows, got {n}")
    s = X.sum(dim=0)
    return float((s.square().sum() - n) / (n * (n - 1)))


def _log_probs(logits_p: torch.Tensor, logits_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits_p, logits_q = torch.as_tensor(logits_p), torch.as_tensor(logits_q)
    if logits_p.shape != logits_q.shape:
        raise ValueError(
            f"logits must have the same shape, got {tuple(logits_p.shape)} and {tuple(logits_q.shape)}"
        )
    if logits_p.dim() < 1:
        raise ValueError("logits need a vocabulary dimension")
    dtype = torch.promote_types(torch.promote_types(logits_p.dtype, logits_q.dtype), torch.float32)
    return (
        torch.log_softmax(logits_p.to(dtype), dim=-1),
        torch.log_softmax(logits_q.to(dtype).to(logits_p.device), dim=-1),
    )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> float:
    if mask is None:
        return float(values.mean()) if values.numel() else float("nan")
    mask = torch.as_tensor(mask, device=values.device)
    if mask.shape != values.shape:
        raise ValueError(f"mask must have the leading shape {tuple(values.shape)}, got {tuple(mask.shape)}")
    w = mask.to(values.dtype)
    total = w.sum()
    if total <= 0:
        return float("nan")
    # where() rather than a product, so an inf at a masked-out position does not turn into NaN.
    return float(torch.where(w > 0, values * w, torch.zeros_like(values)).sum() / total)


def fisher_rao_distance(
    logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    r"""Fisher–Rao geodesic distance between the categorical distributions softmax(logits_p), softmax(logits_q).

    .. math::

        d_{FR}(p, q) = 2 \arccos\Big(\sum_v \sqrt{p_v q_v}\Big)
                     = 4 \arcsin\big(\tfrac12 \lVert \sqrt p - \sqrt q \rVert_2\big) \in [0, \pi]

    over the last dimension (the second form is what is computed; see the module notes). 0 for identical
    distributions, π for disjoint supports; symmetric.

    Parameters
    ----------
    logits_p, logits_q : torch.Tensor
        Same shape [..., V]; −inf entries mean probability 0.
    mask : torch.Tensor, optional
        Shape [...] (bool or 0/1 weights) selecting the positions that enter the mean.

    Returns
    -------
    per_position : torch.Tensor
        Shape [...], in at least float32.
    mean : float
        (Masked) mean over positions; NaN if no position is selected.
    """
    lp, lq = _log_probs(logits_p, logits_q)
    half_hellinger = 0.5 * (lp.mul(0.5).exp() - lq.mul(0.5).exp()).norm(dim=-1)
    d = 4.0 * torch.arcsin(half_hellinger.clamp(0.0, math.sqrt(0.5)))
    return d, _masked_mean(d, mask)


def kl_divergence(
    logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    r"""Kullback–Leibler divergence KL(p‖q) between softmax(logits_p) and softmax(logits_q).

    .. math::

        KL(p \,\|\, q) = \sum_v p_v (\log p_v - \log q_v)

    over the last dimension, with 0·log 0 = 0; +inf where q_v = 0 < p_v.

    Parameters
    ----------
    logits_p, logits_q : torch.Tensor
        Same shape [..., V].
    mask : torch.Tensor, optional
        Shape [...] selecting the positions that enter the mean.

    Returns
    -------
    per_position : torch.Tensor
        Shape [...], in at least float32.
    mean : float
        (Masked) mean over positions; NaN if no position is selected.
    """
    lp, lq = _log_probs(logits_p, logits_q)
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    kl = terms.sum(dim=-1)
    return kl, _masked_mean(kl, mask)
