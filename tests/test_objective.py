"""The ENIGMA objective: each term alone on a hand-built batch, and `micro_loss`, their composition.

- Each term of `train.terms` against a formula written out here (loops, `F.cross_entropy`, the core Sinkhorn).
- `micro_loss` against an independent brute force: every sequence run alone, unpadded, and the three terms
  assembled by hand (values and gradients).
- `micro_loss` against the monolithic objective it replaced (loaded from the git history, skipped outside a git
  checkout), for every ablation: the refactor changed no loss value and no gradient.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import enigma_cli
from enigma_cli.core import grpo_loss, sinkhorn_divergence
from enigma_cli.train import terms
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.episodes import Episodes
from enigma_cli.train.params import from_train_config, rollout_from_train_config
from enigma_cli.train.rewards import RewardResult

ABLATIONS = {"grpo": {"sami": False, "ot": False}, "grpo+sami": {"ot": False}, "grpo+ot": {"sami": False},
             "enigma": {}}


def hand_episodes(n_prompts=2, k=2, m=2, seed=0) -> Episodes:
    """Episodes with made-up token ids: prompt (p, j) and completion lengths vary, advantages are random."""
    g = torch.Generator().manual_seed(seed)
    n = n_prompts * k * m
    prompts = [[1 + (r % 7), 5, 9, 2 + r][: 2 + r % 3] for r in range(n_prompts * k)]
    completions = [[3 + (i * 5 + t) % 11 for t in range(1 + i % 4)] for i in range(n)]
    rewards = RewardResult(total=torch.rand(n, generator=g), terms={}, answers=[None] * n,
                           strict=torch.zeros(n), correct=None)
    return Episodes(n_prompts=n_prompts, k=k, m=m, prompt_ids=prompts, completion_ids=completions,
                    texts=[""] * n, principle_ids=["c"] * n, questions=["q"] * n_prompts, labels=[None] * n,
                    rewards=rewards, advantages=torch.randn(n, generator=g))


# -- each term alone -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accum_steps", [1, 3])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_term_is_grpo_loss_and_logs_the_batch_loss(loss_type, accum_steps):
    g = torch.Generator().manual_seed(1)
    logp = (-2 * torch.rand(4, 5, generator=g)).requires_grad_()
    mask = (torch.arange(5)[None] < torch.tensor([5, 3, 1, 4])[:, None]).float()
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75])
    cfg = TrainConfig(loss_type=loss_type, importance_level="sequence")
    loss, metrics = terms.grpo_term(logp, mask, adv, from_train_config(cfg).grpo, accum_steps=accum_steps, num_items=40)
    # sequence level, on-policy: the clip is inactive and every token of sequence i carries −A_i
    per_seq = -adv
    full = per_seq.mean() if loss_type == "grpo" else (per_seq * mask.sum(1)).sum() / 40
    share = full / accum_steps if loss_type == "grpo" else full
    assert loss.item() == pytest.approx(share.item(), abs=1e-6)
    assert metrics["loss_grpo"] == pytest.approx(share.item() * accum_steps, abs=1e-6)
    expected, _ = grpo_loss(logp, None, adv, mask, loss_type=loss_type, importance_level="sequence",
                            num_items_in_batch=40, accum_steps=accum_steps)
    torch.testing.assert_close(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(expected, logp)[0])


def test_sami_term_is_the_symmetric_cross_entropy():
    S = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss, metrics = terms.sami_term(S, accum_steps=2)
    target = torch.arange(4).repeat(3)
    rows = F.cross_entropy(S.reshape(12, 4), target)
    cols = F.cross_entropy(S.transpose(1, 2).reshape(12, 4), target)
    assert loss.item() == pytest.approx((0.5 * (rows + cols) / 2).item(), abs=1e-6)
    assert metrics["loss_sami"] == pytest.approx((0.5 * (rows + cols)).item(), abs=1e-6)


def test_critic_metrics_of_a_perfect_critic_reach_log_k():
    S = torch.full((2, 3, 3), -50.0) + 50.0 * torch.eye(3)
    metrics = terms.critic_metrics(S, torch.full((2, 3), 4.0))
    for key in ("mi_sym", "sami_mi_sym"):
        assert metrics[key] == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-6), key
    assert metrics["si"] == pytest.approx(1.0, abs=1e-6) and metrics["sami_acc_row"] == 1.0


def test_training_logs_the_si_that_score_principles_reports():
    """One SI: `si`, `mi_sym` and `mi_row` of a training step are score-principles' (its default sum critic) on the
    same mean-token scores and lengths; SAMI's own mean-token bound keeps a name of its own."""
    from enigma_cli.core.infonce import infonce_bounds
    from enigma_cli.score.config import ScoreConfig
    from enigma_cli.score.scoring import CriticScores, _variant

    g = torch.Generator().manual_seed(5)
    S = -2 + 0.3 * torch.randn(6, 3, 3, generator=g) + 0.2 * torch.eye(3)
    lengths = torch.randint(3, 40, (6, 3), generator=g).float()
    metrics = terms.critic_metrics(S, lengths)
    scores = CriticScores(S, torch.zeros(6, 3), lengths, [""] * 18)
    reported = _variant(scores.matrix("sum"), 3, 2, ScoreConfig(bootstrap=10))
    for key in ("si", "mi_sym", "mi_row"):
        assert metrics[key] == pytest.approx(reported[key], abs=1e-6), key
    own = infonce_bounds(S)
    assert metrics["sami_mi_sym"] == pytest.approx(own["mi_sym"]) and metrics["sami_mi_row"] == own["mi_row"]
    assert abs(metrics["si"] - own["mi_sym"] / torch.log(torch.tensor(3.0)).item()) > 1e-3  # two scales


def test_critic_lengths_follow_the_critic_matrix_columns():
    """Column j of matrix (p, s) is completion (p, j, s): its length scales that column of the sum critic."""
    ep = hand_episodes(n_prompts=3, k=3, m=2)
    lengths = terms.critic_lengths(ep, range(1, 3), 2)
    assert lengths.shape == (4, 3)
    for a, p in enumerate(range(1, 3)):
        for s in range(2):
            for j in range(3):
                assert lengths[a * 2 + s, j] == len(ep.completion_ids[ep.completion_index(p, j, s)])


@pytest.mark.parametrize("matrices", [1, 2])
def test_critic_matrix_places_every_pair(matrices):
    """S[(p, s), i, j] holds completion (p, j, s) after principle i's prompt: checked entry by entry."""
    ep = hand_episodes(n_prompts=3, k=3, m=2)
    prompts = range(1, 3)
    diag = ep.group_rows(prompts)
    off = ep.off_diagonal(prompts, matrices)
    score = {}  # (completion row, prompt row) -> a distinct value
    diag_logp = torch.tensor([float(100 * i + ep.prompt_of(i)) for i in diag])
    off_logp = torch.tensor([float(100 * ep.completion_index(p, j, s) + p * ep.k + i) for p, s, i, j in off])
    S = terms.critic_matrix(ep, prompts, matrices, diag_logp, off, off_logp)
    assert S.shape == (len(prompts) * matrices, 3, 3)
    for a, p in enumerate(prompts):
        for s in range(matrices):
            for i in range(3):
                for j in range(3):
                    score[(a, s, i, j)] = 100 * ep.completion_index(p, j, s) + p * ep.k + i
                    assert S[a * matrices + s, i, j].item() == score[(a, s, i, j)], (p, s, i, j)


def test_ot_term_is_the_mean_layer_divergence_of_normalised_points_and_detach_stops_its_gradient():
    g = torch.Generator().manual_seed(3)
    x = {2: torch.randn(6, 8, generator=g, requires_grad=True), 4: torch.randn(6, 8, generator=g, requires_grad=True)}
    y = {2: torch.randn(6, 8, generator=g), 4: torch.randn(6, 8, generator=g), 9: torch.randn(6, 8, generator=g)}
    loss, metrics = terms.ot_term(x, y, eps=0.5, accum_steps=2)
    expected = torch.stack([sinkhorn_divergence(F.normalize(x[k], dim=-1), F.normalize(y[k], dim=-1), eps=0.5,
                                                tol=terms.OT_TOL) for k in (2, 4)]).mean()
    assert loss.item() == pytest.approx(expected.item() / 2, rel=1e-5)
    assert metrics["ot_divergence"] == pytest.approx(expected.item(), rel=1e-5) and metrics["ot_unconverged"] == 0
    assert torch.autograd.grad(loss, x[2])[0].abs().sum() > 0
    logged, _ = terms.ot_term({k: v.detach() for k, v in x.items()}, y, eps=0.5)
    assert not logged.requires_grad
    assert terms.ot_term({1: x[2]}, y, eps=0.5) == (None, {})  # no layer in common: no term


def test_kl_metric_is_the_k3_token_mean():
    logp = torch.tensor([[-1.0, -2.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    d = torch.tensor([-0.5, 1.0])
    assert terms.kl_metric(logp, ref, mask)["kl_ref"] == pytest.approx(float((d.exp() - d - 1).mean()))


# -- the composition -------------------------------------------------------------------------------------------
def _setup(tiny_lm, ablation, **options):
    """A model, episodes (random advantages), the reference pass and a perturbed old policy's pass."""
    from enigma_cli.datasets import load_examples
    from enigma_cli.principles import load_principle_set
    from enigma_cli.train.episodes import collect
    from enigma_cli.train.objective import reference_pass

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    cfg = TrainConfig(prompts_per_step=2, group_size=4, principles_per_prompt=2, max_new_tokens=10, device="cpu",
                      **ABLATIONS[ablation], **options)
    ep = collect(model, tokenizer, load_examples(None, seed=0, split="train"), load_principle_set(cfg.principles),
                 rollout_from_train_config(cfg), step=1)
    ep.advantages = torch.randn(len(ep.completion_ids), generator=torch.Generator().manual_seed(4))
    layers = [1, 4]
    ref = reference_pass(model, ep, layers)
    old_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in old_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    old = reference_pass(old_model, ep, None)
    with torch.no_grad():  # the policy has moved away from the reference: KL and OT are not 0
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.train(), tokenizer.pad_token_id, cfg, ep, layers, ref, old


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _mean_logprobs(model, prompt, completion, layers):
    """Token log-probs of ``completion`` after ``prompt`` and its mean hidden states, one unpadded forward."""
    ids = torch.tensor([prompt + completion])
    out = model(input_ids=ids, output_hidden_states=True)
    logp = torch.log_softmax(out.logits[0, len(prompt) - 1:-1].float(), dim=-1)
    token = logp.gather(1, torch.tensor(completion)[:, None])[:, 0]
    pooled = {layer: out.hidden_states[layer][0, len(prompt):].float().mean(0) for layer in layers}
    return token, pooled


def test_micro_loss_equals_a_brute_force_enigma_objective(tiny_lm):
    """Full ENIGMA, GSPO weights against a perturbed old policy, β > 0: every sequence alone, terms by hand."""
    from enigma_cli.train.objective import micro_loss

    model, _, cfg, ep, layers, ref, old = _setup(tiny_lm, "enigma", beta=0.1, sami_matrices=0,
                                                   lambda_sami=0.7, lambda_ot=2.0)
    loss, metrics = micro_loss(model, ep, range(2), from_train_config(cfg), layers=layers, ref=ref, old=old,
                               num_items=sum(map(len, ep.completion_ids)))
    got = _grads(model, loss)

    k, m, g = ep.k, ep.m, ep.group_size
    policy, seq_mean, pooled = [], [], {layer: [] for layer in layers}
    for i in range(len(ep.completion_ids)):
        token, pool = _mean_logprobs(model, ep.prompt_ids[ep.prompt_of(i)], ep.completion_ids[i], layers)
        policy.append(token)
        seq_mean.append(token.mean())
        for layer in layers:
            pooled[layer].append(pool[layer])
    grpo = []
    for i, token in enumerate(policy):
        n = len(token)
        w = torch.exp((token - old.logp[i, :n]).mean())
        a = ep.advantages[i]
        surrogate = -torch.min(w * a, torch.clamp(w, 0.8, 1.2) * a)
        d = ref.logp[i, :n] - token
        grpo.append(surrogate + cfg.beta * (d.exp() - d - 1).mean())
    expected = torch.stack(grpo).mean()
    S = torch.stack([torch.stack([torch.stack([
        _mean_logprobs(model, ep.prompt_ids[p * k + i], ep.completion_ids[ep.completion_index(p, j, s)], [])[0].mean()
        if i != j else seq_mean[ep.completion_index(p, j, s)] for j in range(k)]) for i in range(k)])
        for p in range(ep.n_prompts) for s in range(m)])
    target = torch.arange(k).repeat(len(S))
    sami = 0.5 * (F.cross_entropy(S.reshape(-1, k), target) + F.cross_entropy(S.transpose(1, 2).reshape(-1, k), target))
    ot = torch.stack([sinkhorn_divergence(F.normalize(torch.stack(pooled[layer]), dim=-1),
                                          F.normalize(ref.pooled[layer], dim=-1), eps=cfg.ot_eps, tol=terms.OT_TOL)
                      for layer in layers]).mean()
    expected = expected + cfg.lambda_sami * sami + cfg.lambda_ot * ot
    assert ot.item() > 1e-4 and metrics["kl_ref"] > 1e-4 and metrics["grpo_clip_ratio/region_mean"] > 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert metrics["loss_sami"] == pytest.approx(sami.item(), rel=1e-4)
    assert metrics["ot_divergence"] == pytest.approx(ot.item(), rel=1e-3, abs=1e-6)
    want = _grads(model, expected)
    scale = max(float(v.abs().max()) for v in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4 * scale, msg=name)
    assert g == k * m


RENAMED = {"mi_sym": "sami_mi_sym", "mi_row": "sami_mi_row"}  # the mean-token bound's names since the one SI
LEGACY = "d84f742"  # the last commit with the monolithic grpo_loss and micro_loss


def _load(name: str, path: Path, **inject):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(inject)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def _legacy_micro_loss(folder: Path):
    """The replaced `micro_loss` (and the `grpo_loss` it called), loaded from the git history."""
    root = Path(enigma_cli.__file__).resolve().parents[1]

    def show(path: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(root), "show", f"{LEGACY}:{path}"], capture_output=True,
                                  text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is None or done.returncode != 0:
            pytest.skip(f"commit {LEGACY} (the replaced objective) is not in this checkout's history")
        return done.stdout

    (folder / "legacy_grpo.py").write_text(show("enigma_cli/core/grpo.py"))
    grpo = _load("legacy_grpo", folder / "legacy_grpo.py")
    source = show("enigma_cli/train/objective.py")
    for old, new in [
        ("from ..core import SinkhornConvergenceWarning, grpo_loss, infonce_bounds, sami_loss, sinkhorn_divergence",
         "from enigma_cli.core import SinkhornConvergenceWarning, infonce_bounds, sami_loss, sinkhorn_divergence"),
        ("from ..models import decode", "from enigma_cli.models import prefix as decode"),  # (its micro_loss never calls it)
        ("from ..models.logprobs import", "from enigma_cli.models.logprobs import"),
        ("from .episodes import Episodes", "from enigma_cli.train.episodes import Episodes"),
    ]:
        assert old in source, old
        source = source.replace(old, new)
    (folder / "legacy_objective.py").write_text(source)
    return _load("legacy_objective", folder / "legacy_objective.py", grpo_loss=grpo.grpo_loss).micro_loss


@pytest.mark.parametrize("loss_type, accum, beta", [("grpo", 1, 0.0), ("grpo", 2, 0.05), ("dapo", 2, 0.0),
                                                    ("dr_grpo", 1, 0.0)])
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_micro_loss_equals_the_replaced_objective(ablation, loss_type, accum, beta, tiny_lm, tmp_path):
    from enigma_cli.train.objective import micro_loss

    legacy = _legacy_micro_loss(tmp_path)
    model, pad, cfg, ep, layers, ref, old = _setup(tiny_lm, ablation, loss_type=loss_type, beta=beta,
                                                   grad_accum=accum)
    num_items = sum(map(len, ep.completion_ids))
    for a in range(accum):
        prompts = range(a * 2 // accum, (a + 1) * 2 // accum)
        new_loss, new_metrics = micro_loss(model, ep, prompts, from_train_config(cfg), layers=layers, ref=ref, old=old,
                                           num_items=num_items, accum_steps=accum)
        new_grads = _grads(model, new_loss)
        old_loss, old_metrics = legacy(model, ep, prompts, cfg, pad_id=pad, layers=layers, ref=ref, old=old,
                                       num_items=num_items, scale=1.0 / accum)
        old_grads = _grads(model, old_loss)
        # the new forward shares each prompt's pass among its rows (models.reader), the old one padded every row:
        # the same numbers up to float32 summation order
        assert new_loss.item() == pytest.approx(old_loss.item(), rel=1e-5, abs=1e-7)
        assert set(new_grads) == set(old_grads)
        scale = max(float(g.abs().max()) for g in old_grads.values())
        for name in new_grads:
            torch.testing.assert_close(new_grads[name], old_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
        # the same metrics, except the old dapo `loss_grpo`, which logged the share and not the batch loss
        for key, value in old_metrics.items():
            # (and ot_unconverged: whether a nearly-converged Sinkhorn solve crosses its tolerance before max_iter
            # turns on the last digits of its inputs, which the two forwards sum in different orders)
            if not (key == "loss_grpo" and loss_type == "dapo") and key != "ot_unconverged":
                got = new_metrics[RENAMED.get(key, key)]
                if key == "si":  # the old si was SAMI's mean-token bound over log K; si is now score-principles'
                    got = new_metrics["sami_mi_sym"] / math.log(ep.k)
                assert got == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_sami_prompts_is_an_unbiased_subsample_of_the_sami_loss(tiny_lm):
    """--sami-prompts n scores the critic matrices of the first n prompts only. Averaged over which prompts come
    first (they are drawn at random each step), the subsampled SAMI loss and its gradient equal the exact ones;
    under gradient accumulation the micro-batches' shares still add up to the mean over the scored matrices."""
    import dataclasses
    import itertools

    from enigma_cli.train.objective import micro_loss

    model, _, cfg, ep, layers, ref, old = _setup(tiny_lm, "grpo+sami", sami_matrices=0, lambda_sami=1.0)
    grpo_only = dataclasses.replace(cfg, sami=False, critic_metrics=False)
    num_items = sum(map(len, ep.completion_ids))

    def sami_part(config, episodes):
        loss_all, _ = micro_loss(model, episodes, range(episodes.n_prompts), from_train_config(config), layers=layers, ref=ref,
                                 old=old, num_items=num_items)
        loss_grpo, _ = micro_loss(model, episodes, range(episodes.n_prompts), from_train_config(grpo_only), layers=layers, ref=ref,
                                  old=old, num_items=num_items)
        return float(loss_all - loss_grpo)

    exact = sami_part(cfg, ep)
    one = dataclasses.replace(cfg, sami_prompts=1)
    # every order of the step's prompts is equally likely: average the one-prompt estimate over them
    estimates = [sami_part(one, _reorder(ep, order)) for order in itertools.permutations(range(ep.n_prompts))]
    assert sum(estimates) / len(estimates) == pytest.approx(exact, rel=1e-5)
    assert max(estimates) - min(estimates) > 1e-6  # a subsample, not the exact term
    # gradient accumulation: two micro-batches, the first holding the only scored prompt, give the same total
    acc = dataclasses.replace(one, grad_accum=2)
    shares = [micro_loss(model, ep, range(a, a + 1), from_train_config(acc), layers=layers, ref=ref, old=old, num_items=num_items,
                         accum_steps=2)[0] for a in range(2)]
    whole, _ = micro_loss(model, ep, range(2), from_train_config(one), layers=layers, ref=ref, old=old, num_items=num_items)
    assert float(sum(shares)) == pytest.approx(float(whole), rel=1e-5)


def _reorder(ep, order):
    """The same episodes with the prompts in another order (each prompt keeps its K principles and G rows)."""
    import dataclasses

    g, k = ep.group_size, ep.k
    rows = [i for p in order for i in range(p * g, (p + 1) * g)]
    return dataclasses.replace(
        ep, prompt_ids=[ep.prompt_ids[p * k + j] for p in order for j in range(k)],
        completion_ids=[ep.completion_ids[i] for i in rows], texts=[ep.texts[i] for i in rows],
        principle_ids=[ep.principle_ids[i] for i in rows], questions=[ep.questions[p] for p in order],
        labels=[ep.labels[i] for i in rows], advantages=ep.advantages[rows])
