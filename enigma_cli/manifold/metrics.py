"""Metric functions of `enigma analyze-manifold`: pure functions of pooled states, token states and
next-token log-distributions (method.md §6). Which points each metric uses, and why, is documented in
`enigma_cli.manifold`; this module only computes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..core import (
    anisotropy,
    effective_rank,
    fisher_rao_distance,
    infonce_bounds,
    kl_divergence,
    linear_cka,
    participation_ratio,
    principal_angles,
    sinkhorn_divergence,
    twonn_dimension,
)
from ..errors import InputError

# scikit-learn is imported inside `decodability` and `_fit_probe`: it adds ~0.7 s to `enigma --help`, whose
# import path runs through enigma_cli.manifold.

SINKHORN_MAX_ITER = 10_000
SINKHORN_TOL = 1e-5


def reference_metrics(X: torch.Tensor, X_ref: torch.Tensor, *, eps: float = 0.05, pca_k: int = 8) -> dict:
    """Drift, CKA and principal angles of pooled points X against the base's X_ref (rows paired)."""
    X, X_ref = X.double(), X_ref.double()
    n, d = X.shape
    if torch.equal(X, X_ref):
        drift = 0.0  # S_eps(mu, mu) = 0 exactly; the solver would return +-1e-9 after three OT problems
    else:
        unit, unit_ref = torch.nn.functional.normalize(X, dim=1), torch.nn.functional.normalize(X_ref, dim=1)
        drift = max(0.0, float(sinkhorn_divergence(unit, unit_ref, eps=eps, max_iter=SINKHORN_MAX_ITER,
                                                   tol=SINKHORN_TOL)))
    out = {"sinkhorn_drift": drift}
    out["cka"] = linear_cka(X, X_ref) if n >= 2 else math.nan
    k = min(int(pca_k), n - 1, d)
    if k >= 1:
        angles = principal_angles(X, X_ref, k)
        out.update(angle_mean=float(angles.mean()), angle_max=float(angles.max()))
    else:
        out.update(angle_mean=math.nan, angle_max=math.nan)
    out["pca_k"] = max(k, 0)
    return out


def intrinsic_metrics(pooled: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Effective rank, participation ratio and anisotropy of pooled points; TwoNN and erank of tokens."""
    out = {"effective_rank": effective_rank(pooled), "participation_ratio": participation_ratio(pooled)}
    nonzero = int((pooled.norm(dim=1) > 0).sum())
    out["anisotropy"] = anisotropy(pooled) if nonzero >= 2 else math.nan
    # Exact duplicates (layer 0: one embedding per token id) carry no neighbourhood information; the core
    # estimator drops r1 = 0 points, but its distances by expansion can leave ~1e-8 instead of 0 for them.
    distinct = torch.unique(tokens, dim=0)
    out["twonn_dim"] = twonn_dimension(distinct) if distinct.shape[0] >= 3 else math.nan
    out["effective_rank_tokens"] = effective_rank(tokens) if tokens.shape[0] >= 1 else math.nan
    return out


def distribution_metrics(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict:
    """Mean Fisher-Rao distance and KL(model ‖ base) between next-token distributions (rows paired)."""
    if logp.shape[0] == 0:
        return {"fisher_rao": math.nan, "kl": math.nan}
    if logp.shape != logp_ref.shape:
        raise InputError(f"the models have different vocabularies ({logp.shape[-1]} and {logp_ref.shape[-1]} "
                         "logits), so their next-token distributions cannot be compared.")
    return {"fisher_rao": fisher_rao_distance(logp, logp_ref)[1], "kl": kl_divergence(logp, logp_ref)[1]}


def decodability(X: torch.Tensor, labels: Sequence[int], groups: Sequence[int], matrix_index: torch.Tensor,
                 k: int, *, folds: int = 5, seed: int = 0) -> dict:
    """Out-of-fold linear-probe accuracy and InfoNCE bounds (linear critic) for the principle from pooled X.

    See the module docstring. NaN when fewer than two questions allow no grouped cross-validation.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedGroupKFold

    nan = {"probe_acc": math.nan, "infonce_mi": math.nan, "infonce_mi_col": math.nan, "log_k": math.log(k)}
    y = np.asarray(labels, dtype=int)
    g = np.asarray(groups, dtype=int)
    n_splits = min(int(folds), len(np.unique(g)), int(np.bincount(y, minlength=k).min()))
    if n_splits < 2 or k < 2:
        return nan
    Xn = X.double().numpy()
    logp = np.full((len(y), k), -math.log(k))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=int(seed))
    # One thread: the problems are tiny, so more threads only add synchronisation (10x slower on a busy box).
    with warnings.catch_warnings(), single_thread(), np.errstate(divide="ignore"):  # log 0 is floored below
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in cv.split(Xn, y, g):
            if len(np.unique(y[train])) < 2:
                continue  # cannot happen when every question has all K principles; kept for odd inputs
            scaler, clf = _fit_probe(Xn[train], y[train], g[train], seed)
            fold = np.full((len(test), k), -1e4)
            fold[:, clf.classes_] = clf.predict_log_proba(scaler.transform(Xn[test]))
            logp[test] = np.maximum(fold, -1e4)  # finite floor: a -inf diagonal would make the loss infinite
    acc = float((logp.argmax(axis=1) == y).mean())
    out = {**nan, "probe_acc": acc}
    if matrix_index.numel():
        # S[b, i, j] = log p(principle i | completion j of cell b): rows principles, columns completions (§3)
        S = torch.as_tensor(logp)[matrix_index].transpose(1, 2)
        bounds = infonce_bounds(S)
        out.update(infonce_mi=bounds["mi_sym"], infonce_mi_col=bounds["mi_col"])
    return out


PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0)  # inverse L2 strengths tried on standardised features (H >> N)


def _fit_probe(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int):
    """Standardise + multinomial logistic regression (lbfgs), C chosen by grouped inner CV on log-loss.

    Returns ``(scaler, classifier)``. The log-loss matters because the probe's log-posteriors are the InfoNCE
    critic: an unregularised probe in H ≫ N dimensions is confidently wrong out of fold, which drove the
    bound to −80 nats in our runs. The scaler is fitted on the whole outer-training fold (the inner folds
    that pick C see its statistics; the outer test fold never does). Within an inner fold the C grid is walked
    upwards with warm starts, the regularisation path that ``LogisticRegressionCV`` follows (its API is in
    flux across scikit-learn versions).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    inner = min(3, len(np.unique(groups)), int(np.bincount(y).min()))
    best_c = 1.0
    if inner >= 2:
        losses = np.zeros(len(PROBE_CS))
        splitter = StratifiedGroupKFold(n_splits=inner, shuffle=True, random_state=int(seed))
        for train, test in splitter.split(Xs, y, groups):
            clf = LogisticRegression(solver="lbfgs", max_iter=2000, warm_start=True)
            for i, c in enumerate(sorted(PROBE_CS)):
                clf.set_params(C=c).fit(Xs[train], y[train])
                logp = clf.predict_log_proba(Xs[test])
                picked = logp[np.arange(len(test)), np.searchsorted(clf.classes_, y[test])]
                losses[i] -= np.maximum(picked, -1e4).sum()
        best_c = sorted(PROBE_CS)[int(np.argmin(losses))]
    return scaler, LogisticRegression(solver="lbfgs", max_iter=2000, C=best_c).fit(Xs, y)


@contextmanager
def single_thread():
    """Run the block with one torch and one BLAS thread, restoring the previous counts afterwards.

    The metric matrices are small (hundreds to a few thousand rows); extra threads only add synchronisation,
    which on a busy machine made the metric stage several times slower in our measurements.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
