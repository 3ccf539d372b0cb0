"""Information geometry of a base model and trained checkpoints, layer by layer (method.md §6).

The base model writes one fixed set of completions: for each question and each principle of a set,
``samples`` completions with the principle in the system prompt (the layout of method.md §3). Every model (the
base itself and each trained checkpoint) then reads exactly those token sequences (prompt + completion,
teacher-forced), and we compare what it computes with what the base computes, per hidden-state index
ℓ = 0 (embeddings) .. L.

Which points each metric uses (choices)
---------------------------------------
- **Pooled points** (one per completion: the mean of its completion-token states at layer ℓ, fp32): Sinkhorn
  drift, linear CKA, principal angles, effective rank, participation ratio, anisotropy and principle
  decodability. This is the point cloud the ENIGMA regulariser constrains (method.md §5).
- **Token subsample** (at most ``tokens`` completion tokens, drawn once with the seed and shared by every
  model, so that clouds are paired): TwoNN intrinsic dimension and a token-level effective rank. TwoNN needs
  far more points than there are completions, and the pooled effective rank can never exceed N − 1. At layer 0
  the states are token embeddings, a discrete set: TwoNN sees each distinct state once.
- **Next-token distributions**, final layer only, at the same token subsample: the distribution that predicts
  each sampled completion token. Fisher–Rao distance 2·arccos(Σ√(pq)) and KL(trained ‖ base), averaged over
  the positions. The base's log-distributions are kept ([tokens, V] fp32 on the CPU) so that only one model
  is in memory at a time.

Memory is bounded by ``batch_size`` (one teacher-forced forward pass, full logits included; generation runs
in batches of ``gen_batch_size``, which only hold a KV cache) plus, per model, N × (L+1) × H pooled floats,
tokens × (L+1) × H token floats and tokens × V log-probabilities (the base's are kept while the others are
read).

Metrics against the base (reference = the base's states on the same completions)
---------------------------------------------------------------------------------
- ``sinkhorn_drift``: debiased S_ε between the L2-normalised pooled clouds (ε = ``eps``, default 0.05 as in
  §5), in float64, clamped at 0 (S_ε ≥ 0; the solver leaves errors of the order of its tolerance), and exactly
  0 without solving when the two clouds are equal.
- ``cka``: linear CKA between the paired pooled matrices.
- ``angle_mean`` / ``angle_max`` (radians): principal angles between the top-k PCA subspaces of the pooled
  matrices, k = min(``pca_k``, N − 1, H) (a centred N-point matrix has rank ≤ N − 1; more directions would be
  arbitrary).
- ``fisher_rao`` / ``kl``: on the final-layer row only (NaN on the others).

Per model, no reference
-----------------------
- ``effective_rank``, ``participation_ratio``, ``anisotropy`` on pooled points; ``twonn_dim`` and
  ``effective_rank_tokens`` on the token subsample.
- **Decodability of the principle** from the pooled states: a multinomial logistic regression (standardised
  features, L2, solver lbfgs, C picked from `PROBE_CS` by an inner grouped 3-fold CV on log-loss) evaluated
  out of fold with ``StratifiedGroupKFold`` (shuffled with the seed; the groups are the questions, so a probe
  never sees the test question under another principle). The out-of-fold accuracy is ``probe_acc``. The same
  out-of-fold log-probabilities are the **linear critic** of an InfoNCE bound: for each (question, sample),
  S[i, j] = log p̂(principle i | completion j) over the K completions of that question (matched negatives, as
  in §3), passed to ``core.infonce_bounds``; ``infonce_mi`` is its symmetric bound in nats (≤ log K, and
  negative when the held-out critic is worse than chance), ``infonce_mi_col`` the column (completion →
  principle) one. The
  log-posterior is the optimal critic for both softmax directions when the principles are equally likely
  (Poole et al. 2019), so no separate critic is fitted.

Determinism: SVDs run on the CPU in float64 (LAPACK), the probe uses lbfgs with fixed folds, and the token
subsample is drawn from a ``torch.Generator`` seeded with ``seed``. Generation is seeded too (``generate``).
The metric stage runs on one CPU thread (`single_thread`), so it does not depend on the thread count either.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

METRICS = (
    "sinkhorn_drift", "cka", "angle_mean", "angle_max", "fisher_rao", "kl",
    "effective_rank", "participation_ratio", "anisotropy", "twonn_dim", "effective_rank_tokens",
    "probe_acc", "infonce_mi", "infonce_mi_col",
)
# The columns of the report, in order (one row per model × layer).
COLUMNS = ("model", "role", "layer", "depth", *METRICS, "log_k", "n_points", "n_tokens", "pca_k")
# Metrics worth a panel in the plot (Fisher-Rao and KL exist at the final layer only).
PLOT_METRICS = tuple(m for m in METRICS if m not in ("fisher_rao", "kl", "infonce_mi_col"))
COMPLETIONS_FILE = "completions.jsonl"
# At eps = 0.05 spread-out clouds can need thousands of iterations (cheap at N ~ 100 points). tol is in cost
# units: 1e-5 at eps = 0.05 leaves the plan's marginals off by ~2e-4 relative, far below drifts of interest.
SINKHORN_MAX_ITER = 10_000
SINKHORN_TOL = 1e-5


@dataclass(frozen=True)
class ManifoldSettings:
    """Knobs of the analysis (the command's config minus models and data)."""

    samples: int = 2
    max_new_tokens: int = 96
    temperature: float = 1.0
    batch_size: int = 16
    gen_batch_size: int = 64
    seed: int = 0
    tokens: int = 1024
    eps: float = 0.05
    pca_k: int = 8
    folds: int = 5


@dataclass(frozen=True)
class Completions:
    """The fixed completions every model reads; entry i was written under principle ``labels[i]``.

    ``groups[i]`` is the question index and ``samples[i]`` the sample index, so (group, sample) picks the K
    completions of one InfoNCE matrix. ``key`` fingerprints what produced them (see `completions_key`).
    """

    key: str
    principle_ids: tuple[str, ...]
    questions: tuple[str, ...]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    labels: list[int]
    groups: list[int]
    samples: list[int]

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def k(self) -> int:
        return len(self.principle_ids)

    def matrix_index(self) -> torch.Tensor:
        """[B, K] long: row b holds the completion written under principle j, for one (question, sample)."""
        where = {(g, s, lab): i for i, (g, s, lab) in enumerate(zip(self.groups, self.samples, self.labels))}
        cells = sorted({(g, s) for g, s in zip(self.groups, self.samples)})
        rows = []
        for g, s in cells:
            if any((g, s, j) not in where for j in range(self.k)):
                continue  # an incomplete cell cannot form a K × K matrix
            rows.append([where[(g, s, j)] for j in range(self.k)])
        return torch.tensor(rows, dtype=torch.long).view(-1, self.k)


@dataclass
class States:
    """What one model computes on the completions (CPU, fp32)."""

    pooled: dict[int, torch.Tensor]  # layer -> [N, H]
    tokens: dict[int, torch.Tensor]  # layer -> [T, H]
    logprobs: torch.Tensor  # [T, V] final-layer next-token log-distributions at the sampled tokens
    num_layers: int
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- completions


def base_identity(spec: str) -> str:
    """What the base model is, for `completions_key`: its resolved path or hub id, plus local file stats.

    The size and mtime of the config and weight files are included, so that a checkpoint rewritten in place does
    not reuse completions written by its previous weights.
    """
    from .models.loading import model_path_for

    path, gguf = model_path_for(spec)
    folder = Path(path)
    if not folder.is_dir():
        return path  # a hub id
    names = [gguf] if gguf else sorted(
        f.name for f in folder.iterdir()
        if f.name in ("config.json", "adapter_config.json") or f.suffix in (".safetensors", ".bin")
    )
    stats = []
    for name in names:
        st = (folder / name).stat()
        stats.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join([path, *stats])


def completions_key(base_source: str, set_name: str, principles: Sequence[tuple[str, str]],
                    questions: Sequence[str], settings: ManifoldSettings) -> str:
    """A short fingerprint of everything that determines the completions (not batch size or device)."""
    payload = {
        "base": base_source, "set": set_name, "principles": [list(p) for p in principles],
        "questions": list(questions), "samples": settings.samples, "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature, "seed": settings.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def generate_completions(lm, pset, questions: Sequence[str], settings: ManifoldSettings,
                         key: str) -> Completions:
    """The base writes ``samples`` completions per (question, principle), principle in the system prompt."""
    from .models.rollout import generate
    from .prompts import render_prompt

    k, m = pset.k, settings.samples
    prompts = [render_prompt(lm.tokenizer, p.text, q) for q in questions for p in pset.principles]
    gen = generate(lm.model, lm.tokenizer, prompts, num_samples=m, max_new_tokens=settings.max_new_tokens,
                   temperature=settings.temperature, seed=settings.seed, batch_size=settings.gen_batch_size)
    # sample (question q, principle j, sample s) sits at index (q*k + j)*m + s
    idx = range(len(gen))
    return Completions(
        key=key, principle_ids=pset.ids, questions=tuple(questions),
        prompt_ids=[list(p) for p in gen.prompt_ids], completion_ids=[list(c) for c in gen.completion_ids],
        texts=list(gen.texts), labels=[(i // m) % k for i in idx], groups=[i // (m * k) for i in idx],
        samples=[i % m for i in idx],
    )


def save_completions(comps: Completions, path: Path) -> None:
    """One JSON object per completion (ids included, so a reuse reads exactly the same tokens); atomic."""
    from .report import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "w") as fh:
        for i in range(len(comps)):
            g, lab = comps.groups[i], comps.labels[i]
            fh.write(json.dumps({
                "key": comps.key, "question_index": g, "question": comps.questions[g], "principle": lab,
                "principle_id": comps.principle_ids[lab], "sample": comps.samples[i],
                "prompt_ids": comps.prompt_ids[i], "completion_ids": comps.completion_ids[i],
                "text": comps.texts[i],
            }) + "\n")


def load_completions(path: Path, key: str, principle_ids: Sequence[str]) -> Completions | None:
    """The saved completions if the file exists, parses and carries ``key``; otherwise None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows or any(r["key"] != key for r in rows):
            return None
        questions: dict[int, str] = {}
        for r in rows:
            questions[int(r["question_index"])] = str(r["question"])
        return Completions(
            key=key, principle_ids=tuple(principle_ids),
            questions=tuple(questions[i] for i in range(len(questions))),
            prompt_ids=[[int(t) for t in r["prompt_ids"]] for r in rows],
            completion_ids=[[int(t) for t in r["completion_ids"]] for r in rows],
            texts=[str(r["text"]) for r in rows], labels=[int(r["principle"]) for r in rows],
            groups=[int(r["question_index"]) for r in rows], samples=[int(r["sample"]) for r in rows],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------- states


def sample_tokens(prompt_lens: Sequence[int], completion_lens: Sequence[int], n_tokens: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of at most ``n_tokens`` completion tokens, uniformly without replacement, sorted.

    Positions are absolute in the right-padded prompt + completion sequence (independent of batching).
    """
    lens = torch.tensor(list(completion_lens), dtype=torch.long)
    total = int(lens.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if n_tokens >= total:
        flat = torch.arange(total)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        flat = torch.randperm(total, generator=gen)[:n_tokens].sort().values
    ends = lens.cumsum(0)
    row = torch.searchsorted(ends, flat, right=True)
    starts = ends - lens
    pos = torch.tensor(list(prompt_lens), dtype=torch.long)[row] + (flat - starts[row])
    return row, pos


@torch.no_grad()
def gather_states(model, pad_id: int, comps: Completions, layers: Sequence[int], rows: torch.Tensor,
                  positions: torch.Tensor, batch_size: int = 16) -> States:
    """Read every completion with ``model``; keep pooled, sampled-token and final-distribution states (fp32).

    ``layers`` are hidden-state indices 0..L; ``rows``/``positions`` come from `sample_tokens`. Completions
    are read in length-sorted batches of ``batch_size`` (one forward pass each, the batch's logits in memory).
    """
    from .models.rollout import mean_pool, pack

    device = next(model.parameters()).device
    n = len(comps)
    order = sorted(range(n), key=lambda i: len(comps.prompt_ids[i]) + len(comps.completion_ids[i]))
    slots_of_row: dict[int, list[int]] = {}
    for slot, r in enumerate(rows.tolist()):
        slots_of_row.setdefault(r, []).append(slot)
    pooled: dict[int, torch.Tensor] = {}
    tokens: dict[int, torch.Tensor] = {}
    logprobs = None
    num_layers = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, max(1, int(batch_size))):
            idx = order[start:start + batch_size]
            batch = pack([comps.prompt_ids[i] for i in idx], [comps.completion_ids[i] for i in idx], pad_id)
            out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                        output_hidden_states=True, use_cache=False)
            states = out.hidden_states
            if num_layers is None:
                num_layers = len(states) - 1
                bad = [layer for layer in layers if not 0 <= layer <= num_layers]
                if bad:
                    raise InputError(f"--layers {bad[0]} does not exist: the model has hidden states "
                                     f"0..{num_layers}.")
                width = states[0].shape[-1]
                for layer in layers:
                    pooled[layer] = torch.zeros(n, width)
                    tokens[layer] = torch.zeros(len(rows), width)
                logprobs = torch.zeros(len(rows), out.logits.shape[-1])
            # which sampled tokens live in this batch: (batch row, position, output slot)
            b_idx, p_idx, s_idx = [], [], []
            for b, i in enumerate(idx):
                for slot in slots_of_row.get(i, ()):
                    b_idx.append(b)
                    p_idx.append(int(positions[slot]))
                    s_idx.append(slot)
            b_t = torch.tensor(b_idx, dtype=torch.long, device=device)
            p_t = torch.tensor(p_idx, dtype=torch.long, device=device)
            s_t = torch.tensor(s_idx, dtype=torch.long)
            cmask = batch.completion_mask.to(device)
            idx_t = torch.tensor(idx, dtype=torch.long)
            for layer in layers:
                pooled[layer][idx_t] = mean_pool(states[layer], cmask).cpu()
                if len(s_idx):
                    tokens[layer][s_t] = states[layer][b_t, p_t].float().cpu()
            if len(s_idx):
                # logits at position p - 1 predict the completion token at p (a completion never starts at 0)
                logprobs[s_t] = torch.log_softmax(out.logits[b_t, p_t - 1].float(), dim=-1).cpu()
            del out, states
    finally:
        model.train(was_training)
    return States(pooled=pooled, tokens=tokens, logprobs=logprobs, num_layers=int(num_layers))


# --------------------------------------------------------------------------------------------- metrics


def reference_metrics(X: torch.Tensor, X_ref: torch.Tensor, *, eps: float = 0.05, pca_k: int = 8) -> dict:
    """Drift, CKA and principal angles of pooled points X against the base's X_ref (rows paired)."""
    from .core import linear_cka, principal_angles, sinkhorn_divergence

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
    from .core import anisotropy, effective_rank, participation_ratio, twonn_dimension

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
    from .core import fisher_rao_distance, kl_divergence

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
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedGroupKFold

    from .core import infonce_bounds

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
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def layer_rows(name: str, role: str, states: States, ref: States, comps: Completions,
               settings: ManifoldSettings) -> list[dict]:
    """One report row per layer of ``states`` (compared with the base's ``ref``), on one CPU thread."""
    with single_thread():
        return _layer_rows(name, role, states, ref, comps, settings)


def _layer_rows(name: str, role: str, states: States, ref: States, comps: Completions,
                settings: ManifoldSettings) -> list[dict]:
    matrices = comps.matrix_index()
    rows = []
    last = states.num_layers
    for layer in sorted(states.pooled):
        X, X_ref = states.pooled[layer], ref.pooled[layer]
        row = {"model": name, "role": role, "layer": layer, "depth": layer / last if last else 0.0}
        row.update(reference_metrics(X, X_ref, eps=settings.eps, pca_k=settings.pca_k))
        row.update(intrinsic_metrics(X, states.tokens[layer]))
        row.update(decodability(X, comps.labels, comps.groups, matrices, comps.k, folds=settings.folds,
                                seed=settings.seed))
        dist = distribution_metrics(states.logprobs, ref.logprobs) if layer == last else {}
        row.update({"fisher_rao": dist.get("fisher_rao", math.nan), "kl": dist.get("kl", math.nan)})
        row.update(n_points=int(X.shape[0]), n_tokens=int(states.tokens[layer].shape[0]))
        rows.append({c: row.get(c, math.nan) for c in COLUMNS})
    return rows


# ------------------------------------------------------------------------------------------ checks


@dataclass(frozen=True)
class ModelShape:
    """What `check_compatible` needs of a loaded model (so the base's weights can be freed)."""

    name: str
    num_layers: int
    hidden_size: int
    vocab: dict | None = None

    @classmethod
    def of(cls, lm) -> ModelShape:
        cfg = _text_config(lm.model.config)
        return cls(lm.name, int(lm.num_layers), int(cfg.hidden_size), dict(lm.tokenizer.get_vocab()))

    @classmethod
    def peek(cls, spec: str) -> ModelShape | None:
        """Read a local checkpoint's config and tokenizer without its weights; None when that is not possible.

        Follows a LoRA adapter folder to its base (its own tokenizer wins when it has one). Only an early
        check before anything is loaded or generated; `of` on the loaded model is the real one.
        """
        from transformers import AutoConfig, AutoTokenizer

        from .models.loading import model_path_for

        name, tokenizer_dir = spec, None
        for _ in range(3):  # an adapter names its base, which could itself be an adapter; stop somewhere
            path, gguf = model_path_for(spec)
            folder = Path(path)
            if gguf is not None or not folder.is_dir():
                return None
            if (folder / "config.json").is_file():
                try:
                    cfg = _text_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
                    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or folder), local_files_only=True)
                    return cls(name, int(cfg.num_hidden_layers), int(cfg.hidden_size), dict(tok.get_vocab()))
                except Exception:  # noqa: BLE001 - load_model reports an unreadable checkpoint later
                    return None
            has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
            if tokenizer_dir is None and has_tokenizer:
                tokenizer_dir = folder
            try:
                spec = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return None


def check_compatible(base: ModelShape, other: ModelShape) -> None:
    """Depth, width and tokenizer of ``other`` must be the base's (the same token ids are fed to both)."""
    if other.num_layers != base.num_layers:
        raise InputError(f"model '{other.name}' has {other.num_layers} layers but the base '{base.name}' has "
                         f"{base.num_layers}; per-layer comparisons need models of the same depth.")
    if other.hidden_size != base.hidden_size:
        raise InputError(f"model '{other.name}' has hidden size {other.hidden_size} but the base "
                         f"'{base.name}' has {base.hidden_size}; drift and principal angles need states of "
                         "the same width.")
    if other.vocab is not None and base.vocab is not None and other.vocab != base.vocab:
        raise InputError(f"model '{other.name}' has a different tokenizer from the base '{base.name}', so it "
                         "cannot read the base's completions token for token.")


def _text_config(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def resolve_layers(spec: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """``all``/None → 0..L; a comma list (negative counts from L, as in Python) → sorted unique indices."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(num_layers + 1))
    items = parse_layers(spec) if isinstance(spec, str) else list(spec)
    out = set()
    for layer in items:
        if not -(num_layers + 1) <= layer <= num_layers:
            raise InputError(f"--layers {layer} does not exist: hidden states run 0..{num_layers} "
                             f"(or -{num_layers + 1}..-1 from the last).")
        out.add(layer % (num_layers + 1))
    return sorted(out)


def parse_layers(spec: str) -> list[int] | None:
    """Syntax check of ``--layers``: ``all`` (None) or comma-separated integers."""
    text = (spec or "").strip().lower()
    if text in ("", "all"):
        return None
    try:
        items = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--layers must be 'all' or comma-separated integers such as 0,6,-1, "
                         f"not {spec!r}.") from None
    if not items:
        raise InputError(f"--layers must be 'all' or comma-separated integers, not {spec!r}.")
    return items


# ------------------------------------------------------------------------------------------ pipeline


def analyze(base_spec: str, trained_specs: Sequence[str], pset, questions: Sequence[str],
            settings: ManifoldSettings, *, layers: str = "all", device: str = "auto", dtype: str = "auto",
            completions_path: Path | None = None, reuse: bool = True,
            log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Load the base, fix the completions, read them with every model; one row per model × layer.

    Models are loaded one at a time (the base's states are kept). Returns (rows, info) where info says whether
    the completions were reused and how many points/tokens were used.
    """
    from .models.loading import load_model

    say = log or (lambda _msg: None)
    base = load_model(base_spec, device=device, dtype=dtype)
    layer_list = resolve_layers(layers, base.num_layers)
    key = completions_key(base_identity(base_spec), pset.name, [(p.id, p.text) for p in pset.principles],
                          questions, settings)
    comps = load_completions(completions_path, key, pset.ids) if (completions_path and reuse) else None
    reused = comps is not None
    if comps is None:
        if completions_path is not None and completions_path.exists():
            say(f"{completions_path} does not match this configuration; generating new completions.")
        say(f"generating {len(questions) * pset.k * settings.samples} completions with {base_spec}")
        comps = generate_completions(base, pset, questions, settings, key)
        if completions_path is not None:
            save_completions(comps, completions_path)
    else:
        say(f"reusing {len(comps)} completions from {completions_path}")
    if len(comps) == 0 or sum(len(c) for c in comps.completion_ids) == 0:
        raise InputError("the base model produced no completion tokens; there is nothing to analyse.")

    rows_t, pos_t = sample_tokens([len(p) for p in comps.prompt_ids], [len(c) for c in comps.completion_ids],
                                  settings.tokens, settings.seed)
    pad_id = int(base.tokenizer.pad_token_id)  # load_model sets pad = eos when a tokenizer has none
    say(f"reading {len(comps)} completions ({len(rows_t)} sampled tokens) with {base_spec}")
    ref = gather_states(base.model, pad_id, comps, layer_list, rows_t, pos_t, settings.batch_size)
    names = _labels([base_spec, *trained_specs])
    rows = layer_rows(names[0], "base", ref, ref, comps, settings)
    base_shape = ModelShape.of(base)
    del base
    _free()
    for spec, name in zip(trained_specs, names[1:]):
        lm = load_model(spec, device=device, dtype=dtype)
        check_compatible(base_shape, ModelShape.of(lm))
        say(f"reading {len(comps)} completions with {spec}")
        states = gather_states(lm.model, pad_id, comps, layer_list, rows_t, pos_t, settings.batch_size)
        del lm
        _free()
        rows.extend(layer_rows(name, "trained", states, ref, comps, settings))
        del states
    info = {"reused": reused, "completions": len(comps), "tokens": len(rows_t), "layers": layer_list,
            "num_layers": ref.num_layers, "key": key}
    return rows, info


def _labels(specs: Sequence[str]) -> list[str]:
    """Model names for the report, made unique ('x', 'x#2') when a spec is given twice."""
    seen: dict[str, int] = {}
    out = []
    for s in specs:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}#{seen[s]}")
    return out


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_principle_set() -> str:
    """The shipped set 'stepwise-vs-oneline', or the first shipped set when that one is absent."""
    from .principles import shipped_set_paths

    stems = [p.stem for p in shipped_set_paths()]
    return "stepwise-vs-oneline" if "stepwise-vs-oneline" in stems or not stems else stems[0]


__all__ = [
    "COLUMNS", "METRICS", "Completions", "ManifoldSettings", "ModelShape", "States", "analyze", "base_identity",
    "check_compatible", "completions_key", "decodability", "distribution_metrics", "gather_states", "generate_completions",
    "intrinsic_metrics", "layer_rows", "load_completions", "reference_metrics", "resolve_layers",
    "sample_tokens", "save_completions",
]
