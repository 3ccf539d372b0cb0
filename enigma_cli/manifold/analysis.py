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
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import InputError
from ..models import loading
from ..principles import shipped_set_paths
from .completions import (
    Completions,
    base_identity,
    completions_key,
    generate_completions,
    load_completions,
    save_completions,
)
from .config import ManifoldConfig
from .metrics import decodability, distribution_metrics, intrinsic_metrics, reference_metrics, single_thread
from .shape import ModelShape, analysed_layers, check_compatible
from .states import States, gather_states, sample_tokens

METRICS = (
    "sinkhorn_drift", "cka", "angle_mean", "angle_max", "fisher_rao", "kl",
    "effective_rank", "participation_ratio", "anisotropy", "twonn_dim", "effective_rank_tokens",
    "probe_acc", "infonce_mi", "infonce_mi_col",
)
# The columns of the report, in order (one row per model × layer).
COLUMNS = ("model", "role", "layer", "depth", *METRICS, "log_k", "n_points", "n_tokens", "pca_k")
# Metrics worth a panel in the plot (Fisher-Rao and KL exist at the final layer only).
PLOT_METRICS = tuple(m for m in METRICS if m not in ("fisher_rao", "kl", "infonce_mi_col"))
# At eps = 0.05 spread-out clouds can need thousands of iterations (cheap at N ~ 100 points). tol bounds the L1
# error of the plan's marginal: 1e-5 misplaces 0.001% of the mass, far below drifts of interest.


def analyze(settings: ManifoldConfig, pset, questions: Sequence[str], *, completions_path: Path | None = None,
            log: Callable[[str], None] | None = None, fit: Callable | None = None) -> tuple[list[dict], dict]:
    """Load the base, fix the completions, read them with every model; one row per model × layer.

    Models are loaded one at a time (the base's states are kept). Returns (rows, info) where info says whether
    the completions were reused and how many points/tokens were used. `fit(base, questions)` keeps the questions
    whose prompts fit the loaded base (`context.ContextCheck.loaded`).
    """
    say = log or (lambda _msg: None)
    base_spec, trained_specs, device, dtype = settings.base, settings.trained, settings.device, settings.dtype
    base = loading.load_model(base_spec, device=device, dtype=dtype)
    questions = fit(base, list(questions)) if fit is not None else questions
    layer_list = analysed_layers(settings.layers, base.num_layers)
    key = completions_key(base_identity(base_spec), pset.name, [(p.id, p.text) for p in pset.principles],
                          questions, settings)
    comps = load_completions(completions_path, key, pset.ids) if (completions_path and settings.reuse) else None
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
        lm = loading.load_model(spec, device=device, dtype=dtype)
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
    stems = [p.stem for p in shipped_set_paths()]
    return "stepwise-vs-oneline" if "stepwise-vs-oneline" in stems or not stems else stems[0]


def layer_rows(name: str, role: str, states: States, ref: States, comps: Completions,
               settings: ManifoldConfig) -> list[dict]:
    """One report row per layer of ``states`` (compared with the base's ``ref``), on one CPU thread."""
    with single_thread():
        return _layer_rows(name, role, states, ref, comps, settings)


def _layer_rows(name: str, role: str, states: States, ref: States, comps: Completions,
                settings: ManifoldConfig) -> list[dict]:
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
