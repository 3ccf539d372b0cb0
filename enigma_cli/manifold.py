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
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError
from .manifold_completions import (  # noqa: F401 - re-exported: completions live there
    COMPLETIONS_FILE,
    Completions,
    base_identity,
    completions_key,
    generate_completions,
    load_completions,
    save_completions,
)
from .manifold_metrics import (  # noqa: F401 - re-exported: the metric functions live there
    PROBE_CS,
    decodability,
    distribution_metrics,
    intrinsic_metrics,
    reference_metrics,
    single_thread,
)

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


@dataclass
class States:
    """What one model computes on the completions (CPU, fp32)."""

    pooled: dict[int, torch.Tensor]  # layer -> [N, H]
    tokens: dict[int, torch.Tensor]  # layer -> [T, H]
    logprobs: torch.Tensor  # [T, V] final-layer next-token log-distributions at the sampled tokens
    num_layers: int
    extra: dict = field(default_factory=dict)


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
    from .models.logprobs import mean_pool, pack

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
