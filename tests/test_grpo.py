"""Tests for enigma_cli.core.grpo against TRL and against hand-written references.

The loss tests call TRL's own ``GRPOTrainer._compute_loss`` (the installed TRL, not a copy of its formulas)
bound to a lightweight stand-in ``self``: a ``SimpleNamespace`` carrying the attributes that method reads,
whose ``_get_per_token_logps_and_entropies`` returns our ``logp`` tensor, so TRL's value and its autograd
gradient come from exactly the same leaf tensor as ours.

TRL's advantage computation lives inline in ``_generate_and_score_completions`` (generation, reward
functions, gathering), which cannot be called without a model; the advantage tests compare instead with a
plain-Python loop (``statistics.stdev``, Bessel-corrected as TRL's ``nanstd``) and with TRL's own
``nanstd`` helper applied as TRL applies it.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from enigma_cli.core.grpo import TRL_LOSS_TYPES, grpo_advantages, grpo_loss

LOSS_TYPES = tuple(TRL_LOSS_TYPES)  # TRL's names, each a (surrogate, aggregation) pair here
CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
MAX_LEN = 10
EPS_LOW, EPS_HIGH = 0.2, 0.28
CISPO_CAP = 1.3


@pytest.fixture(scope="module")
def trl_trainer():
    module = pytest.importorskip("trl.trainer.grpo_trainer")
    return module.GRPOTrainer


class _Accelerator:
    """Single-process stand-in: every collective is the identity."""

    num_processes = 1

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def trl_compute_loss(
    trainer_cls,
    logp,
    old_logp,
    advantages,
    mask,
    *,
    loss_type,
    level,
    eps_low=EPS_LOW,
    eps_high=EPS_HIGH,
    beta=0.0,
    ref_logp=None,
    bias_correction=False,
    delta=None,
    num_items=None,
    grad_accum=1,
    steps_per_generation=1,
):
    """Run TRL's ``GRPOTrainer._compute_loss`` on our tensors; returns (loss, metrics of this call)."""
    bsz, length = logp.shape
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    stub = SimpleNamespace(
        loss_type=loss_type,
        importance_sampling_level=level,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        beta=beta,
        max_completion_length=MAX_LEN,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        aux_loss_enabled=False,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=grad_accum,
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        _metrics=metrics,
        args=SimpleNamespace(
            use_bias_correction_kl=bias_correction,
            delta=delta,
            steps_per_generation=steps_per_generation,
            sapo_temperature_pos=1.0,
            sapo_temperature_neg=1.05,
        ),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(bsz, 1, dtype=torch.long),
        "prompt_mask": torch.ones(bsz, 1, dtype=torch.long),
        "completion_ids": torch.zeros(bsz, length, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "num_items_in_batch": torch.as_tensor(mask.sum() if num_items is None else num_items),
    }
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    loss = trainer_cls._compute_loss(stub, None, inputs)
    return loss, {k: v[0] for k, v in metrics["train"].items()}


def make_batch(seed=0):
    """B=6, T=7 batch; per-sequence log-ratio offsets put rows in and out of the trust region on both sides,
    row 5 has no completion token."""
    g = torch.Generator().manual_seed(seed)
    bsz, length = 6, 7
    lengths = torch.tensor([7, 4, 6, 2, 5, 0])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    logp = (-3.0 * torch.rand(bsz, length, generator=g)).requires_grad_()
    offset = torch.tensor([0.5, -0.5, 0.05, -0.5, 0.5, 0.0])[:, None]
    old_logp = logp.detach() - offset - 0.3 * torch.randn(bsz, length, generator=g)
    ref_logp = logp.detach() + 0.4 * torch.randn(bsz, length, generator=g)
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.7, -0.3, 0.2])
    return logp, old_logp, ref_logp, advantages, mask


def our_loss(logp, old_logp, advantages, mask, *, loss_type, level, beta=0.0, ref_logp=None, **kw):
    """grpo_loss under TRL's name for the (surrogate, aggregation) pair."""
    eps_high = CISPO_CAP if loss_type == "cispo" else EPS_HIGH
    surrogate, aggregation = TRL_LOSS_TYPES[loss_type]
    return grpo_loss(
        logp,
        old_logp,
        advantages,
        mask,
        surrogate=surrogate,
        loss_type=aggregation,
        importance_level=level,
        eps_low=EPS_LOW,
        eps_high=eps_high,
        beta=beta,
        ref_logp=ref_logp,
        max_completion_length=MAX_LEN,
        **kw,
    )


def assert_close(ours, theirs, what):
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------- loss vs TRL


@pytest.mark.parametrize("beta,bias_correction", [(0.0, False), (0.04, False), (0.04, True)])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_grad_match_trl(trl_trainer, loss_type, level, beta, bias_correction):
    logp, old_logp, ref_logp, adv, mask = make_batch()
    num_items = mask.sum() + 9  # the generation batch holds more tokens than this micro-batch
    kw = {"num_items_in_batch": num_items} if loss_type in ("dapo", "cispo") else {}
    ref = ref_logp if beta else None

    ours, stats = our_loss(
        logp,
        old_logp,
        adv,
        mask,
        loss_type=loss_type,
        level=level,
        beta=beta,
        ref_logp=ref,
        kl_bias_correction=bias_correction,
        **kw,
    )
    (g_ours,) = torch.autograd.grad(ours, logp)
    theirs, metrics = trl_compute_loss(
        trl_trainer,
        logp,
        old_logp,
        adv,
        mask,
        loss_type=loss_type,
        level=level,
        beta=beta,
        ref_logp=ref,
        bias_correction=bias_correction,
        num_items=num_items,
        eps_high=CISPO_CAP if loss_type == "cispo" else EPS_HIGH,
    )
    (g_theirs,) = torch.autograd.grad(theirs, logp)

    assert_close(ours, theirs, "loss")
    assert_close(g_ours, g_theirs, "gradient")
    assert g_ours.abs().sum() > 0
    assert torch.all(g_ours[mask == 0] == 0), "padding must get no gradient"

    # Same statistics, under TRL's names.
    for key, value in metrics.items():
        if key == "entropy":
            continue
        assert key in stats, f"TRL logs {key!r}, we do not"
        mine = stats[key].item()
        assert (math.isnan(mine) and math.isnan(value)) or mine == pytest.approx(value, abs=1e-6), key
    if beta:
        assert "kl" in stats
    # The fixture really exercises the clipping on both sides.
    if loss_type in CLIPPED:
        assert stats["clip_ratio/low_mean"] > 0 and stats["clip_ratio/high_mean"] > 0
    if loss_type == "cispo":
        assert stats["cispo_clip_ratio"] > 0


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_matches_trl(trl_trainer, loss_type, level):
    """old_logp=None is TRL's on-policy shortcut (old = logp.detach())."""
    logp, _, _, adv, mask = make_batch(1)
    kw = {"num_items_in_batch": mask.sum()} if loss_type in ("dapo", "cispo") else {}
    ours, _ = our_loss(logp, None, adv, mask, loss_type=loss_type, level=level, **kw)
    theirs, _ = trl_compute_loss(
        trl_trainer,
        logp,
        None,
        adv,
        mask,
        loss_type=loss_type,
        level=level,
        eps_high=CISPO_CAP if loss_type == "cispo" else EPS_HIGH,
    )
    assert_close(ours, theirs, "loss")
    assert_close(torch.autograd.grad(ours, logp)[0], torch.autograd.grad(theirs, logp)[0], "gradient")


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_two_sided_delta_matches_trl(trl_trainer, level):
    logp, old_logp, _, adv, mask = make_batch(2)
    ours, _ = our_loss(logp, old_logp, adv, mask, loss_type="bnpo", level=level, delta=1.4)
    theirs, _ = trl_compute_loss(
        trl_trainer, logp, old_logp, adv, mask, loss_type="bnpo", level=level, delta=1.4
    )
    plain, _ = our_loss(logp, old_logp, adv, mask, loss_type="bnpo", level=level)
    assert_close(ours, theirs, "loss")
    assert_close(torch.autograd.grad(ours, logp)[0], torch.autograd.grad(theirs, logp)[0], "gradient")
    assert not torch.isclose(ours, plain), "delta must change this batch's loss"


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradient_accumulation_contract(trl_trainer, loss_type):
    """Each micro-batch's loss is TRL's under accumulation (grpo-like ones divided by the accumulation steps, dapo
    by the generation batch's tokens), and the micro-batch losses of a batch sum to its full-batch loss."""
    logp, old_logp, _, adv, mask = make_batch(3)
    halves = [slice(0, 3), slice(3, 6)]
    total = mask.sum()
    ours_sum, trl_sum = 0.0, 0.0
    for s in halves:
        ours, _ = our_loss(
            logp[s],
            old_logp[s],
            adv[s],
            mask[s],
            loss_type=loss_type,
            level="token",
            num_items_in_batch=total,
            accum_steps=2,
        )
        theirs, _ = trl_compute_loss(
            trl_trainer,
            logp[s],
            old_logp[s],
            adv[s],
            mask[s],
            loss_type=loss_type,
            level="token",
            num_items=total,
            grad_accum=2,
            steps_per_generation=2,
            eps_high=CISPO_CAP if loss_type == "cispo" else EPS_HIGH,
        )
        assert_close(ours, theirs, f"{loss_type} micro-batch loss")
        ours_sum = ours_sum + ours
        trl_sum = trl_sum + theirs
    assert_close(ours_sum, trl_sum, loss_type)
    full, _ = our_loss(logp, old_logp, adv, mask, loss_type=loss_type, level="token")
    if loss_type == "bnpo":  # a per-micro-batch token mean: additive only over equal token counts (17 and 7 here)
        assert not torch.isclose(ours_sum, full)
    else:  # dapo-like exactly; the per-sequence means because the halves hold equally many sequences
        assert_close(ours_sum, full, f"{loss_type} micro-batches sum to the full-batch loss")


# ---------------------------------------------------------------------------- loss, independent checks


def test_on_policy_value_is_minus_mean_advantage_but_gradient_is_not_zero():
    g = torch.Generator().manual_seed(4)
    bsz, length = 8, 5
    lengths = torch.tensor([5, 3, 1, 4, 5, 2, 3, 5])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    logp = (-2.0 * torch.rand(bsz, length, generator=g)).requires_grad_()
    adv = grpo_advantages(torch.rand(bsz, generator=g), group_size=4)

    for level in ("token", "sequence"):
        loss, stats = grpo_loss(logp, None, adv, mask, loss_type="grpo", importance_level=level)
        assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
        assert abs(loss.item()) < 1e-5  # advantages are zero-mean in each group
        assert stats["ratio_mean"].item() == pytest.approx(1.0)
        assert stats["clip_ratio/region_mean"].item() == 0.0
        (grad,) = torch.autograd.grad(loss, logp)
        # d/dlogp_{i,t} of -mean_i A_i * w_i: -A_i / (B |y_i|) for both levels (GSPO: w_i' = mean_t).
        expected = -(adv[:, None] * mask) / (bsz * lengths[:, None].float())
        torch.testing.assert_close(grad, expected)
        assert grad.abs().sum() > 0

    loss, _ = grpo_loss(logp, None, adv, mask, loss_type="dapo")
    assert loss.item() == pytest.approx(-(adv * lengths).sum().item() / lengths.sum().item(), abs=1e-6)


def test_sequence_level_weight_is_mean_log_ratio():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.5, -9.0]])  # last token is padding: must not enter the mean
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    _, stats = grpo_loss(logp, old, torch.tensor([1.0]), mask, importance_level="sequence", eps_low=10.0)
    assert stats["ratio_mean"].item() == pytest.approx(math.exp(0.5))


def test_kl_k3_estimator():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    zero = torch.tensor([0.0])
    loss, stats = grpo_loss(logp, None, zero, mask, loss_type="bnpo", beta=0.5, ref_logp=ref)
    d = ref - logp.detach()
    k3 = (d.exp() - d - 1).mean()
    assert stats["kl"].item() == pytest.approx(k3.item())
    assert loss.item() == pytest.approx(0.5 * k3.item())


def test_loss_validation():
    logp, old_logp, _, adv, mask = make_batch()
    with pytest.raises(ValueError, match="grpo, bnpo, dr_grpo, dapo"):
        grpo_loss(logp, old_logp, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="clip, cispo, sapo"):
        grpo_loss(logp, old_logp, adv, mask, surrogate="ppo")
    with pytest.raises(ValueError, match="token, sequence"):
        grpo_loss(logp, old_logp, adv, mask, importance_level="segment")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old_logp, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, old_logp, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="eps_high"):
        grpo_loss(logp, old_logp, adv, mask, surrogate="cispo", loss_type="dapo")
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, old_logp, adv, mask[:, :3])
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old_logp, adv[:4], mask)


# ----------------------------------------------------------------------------------------- advantages


def loop_advantages(rewards, group_size, scale):
    """Plain-Python reference: NaN rewards are left out and get advantage 0, as in TRL."""
    values = [float(r) for r in rewards]
    out = []
    batch = [v for v in values if not math.isnan(v)]
    for start in range(0, len(values), group_size):
        group = values[start : start + group_size]
        valid = [v for v in group if not math.isnan(v)]
        mean = statistics.mean(valid)
        if scale == "group":
            std = statistics.stdev(valid) if len(valid) > 1 else (0.0 if group_size == 1 else math.nan)
        elif scale == "batch":
            std = statistics.stdev(batch) if len(values) > 1 else 0.0
        else:
            std = None
        for v in group:
            a = v - mean if std is None else (v - mean) / (std + 1e-4)
            out.append(0.0 if math.isnan(a) else a)
    return torch.tensor(out)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_loop(scale):
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(5)) * 3
    rewards[4:8] = torch.tensor([1.0, 0.0, 1.0, 1.0])  # binary group
    ours = grpo_advantages(rewards, group_size=4, scale=scale)
    torch.testing.assert_close(ours, loop_advantages(rewards.tolist(), 4, scale))
    assert ours.view(3, 4).sum(1).abs().max() < 1e-5


def test_advantages_with_unscorable_rewards_and_degenerate_groups():
    nan = float("nan")
    rewards = torch.tensor([1.0, nan, 0.0, 3.0, 2.0, 2.0, 2.0, 2.0, 5.0, nan, nan, 1.0])
    for scale in ("group", "batch", "none"):
        ours = grpo_advantages(rewards, 4, scale)
        torch.testing.assert_close(ours, loop_advantages(rewards.tolist(), 4, scale))
        assert ours[1] == 0 and torch.all(ours[4:8] == 0)
    # One completion per prompt: no spread to learn from, advantage 0 (TRL's convention, not NaN).
    assert torch.all(grpo_advantages(torch.tensor([0.3, 1.0]), 1) == 0)


def test_advantages_match_trl_nanstd(trl_trainer):
    from trl.trainer.utils import nanstd

    rewards = torch.randn(16, generator=torch.Generator().manual_seed(6))
    grouped = rewards.view(-1, 4)
    centred = rewards - grouped.mean(1).repeat_interleave(4)
    group_std = nanstd(grouped, dim=1).repeat_interleave(4)
    torch.testing.assert_close(grpo_advantages(rewards, 4, "group"), centred / (group_std + 1e-4))
    torch.testing.assert_close(grpo_advantages(rewards, 4, "batch"), centred / (nanstd(rewards) + 1e-4))
    # TRL's std is Bessel-corrected, i.e. torch.std's default, not the population std.
    torch.testing.assert_close(group_std, grouped.std(1).repeat_interleave(4))


def test_advantages_validation():
    with pytest.raises(ValueError, match=r"10 rewards.*group_size=4"):
        grpo_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="group, batch, none"):
        grpo_advantages(torch.zeros(8), 4, scale="global")
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(8), 0)
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 4), 4)


def test_lazy_reexport():
    from enigma_cli import core

    assert core.grpo_loss is grpo_loss and core.grpo_advantages is grpo_advantages
