"""Mixed precision on the CPU (`models.precision`): what ``--dtype`` chooses, that autocast reaches every forward
(sampling, scoring, the update) while the weights, the optimizer state and the estimators stay float32, and that
a bf16-mixed step is close to the float32 one."""

from __future__ import annotations

import copy

import pytest
import torch
from clirun import invoke, refused

from enigma_cli.errors import InputError
from enigma_cli.models import precision
from enigma_cli.models.precision import MIXED, MIXED_MIN_PARAMS, choose

pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning")

WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"
WITHOUT = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
BIG, SMALL = 10 * MIXED_MIN_PARAMS, MIXED_MIN_PARAMS // 2


# -- the choice ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cpuinfo, n_params, autocast", [
    (WITH_BF16, BIG, torch.bfloat16), (WITH_AMX, BIG, torch.bfloat16), (WITHOUT, BIG, None),
    (WITH_BF16, SMALL, None), (WITHOUT, SMALL, None), ("", BIG, None),
    (WITH_BF16, None, torch.bfloat16),  # before the load: the weights' dtype is all that is asked then
])
def test_auto_on_the_cpu_follows_the_flags_and_the_size(cpuinfo, n_params, autocast):
    chosen = choose("auto", "cpu", n_params, cpuinfo=cpuinfo)
    assert chosen.weights == torch.float32 and chosen.autocast == autocast
    assert chosen.name == (MIXED if autocast else "float32")
    line = chosen.describe()
    assert line.startswith(f"{chosen.name}") and "auto" in line and "--dtype float32" in line and "\n" not in line


@pytest.mark.parametrize("name, weights, autocast", [
    ("float32", torch.float32, None), ("fp32", torch.float32, None), ("bfloat16", torch.bfloat16, None),
    ("bf16", torch.bfloat16, None), ("float16", torch.float16, None), (MIXED, torch.float32, torch.bfloat16),
    ("mixed", torch.float32, torch.bfloat16), ("BF16-Autocast", torch.float32, torch.bfloat16),
])
@pytest.mark.parametrize("cpuinfo", [WITH_BF16, WITHOUT])
def test_explicit_values_are_honoured_whatever_the_cpu(name, weights, autocast, cpuinfo):
    chosen = choose(name, "cpu", BIG, cpuinfo=cpuinfo)
    assert (chosen.weights, chosen.autocast) == (weights, autocast)


def test_auto_on_cuda_keeps_bf16_weights(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    chosen = choose("auto", torch.device("cuda", 0), BIG, cpuinfo=WITH_BF16)
    assert (chosen.weights, chosen.autocast) == (torch.bfloat16, None)


def test_flags_are_read_from_cpuinfo_on_linux_only(monkeypatch):
    assert precision.cpu_bf16_flag(WITH_BF16) == "avx512_bf16"
    assert precision.cpu_bf16_flag(WITH_AMX) == "amx_bf16"
    assert precision.cpu_bf16_flag(WITHOUT) is None
    assert precision.cpu_bf16_flag("flags : avx512_bf16x\n") is None  # whole flags, not substrings
    precision._cpuinfo.cache_clear()
    monkeypatch.setattr(precision.sys, "platform", "darwin")
    try:
        assert precision.cpu_bf16_flag() is None
        assert choose("auto", "cpu", BIG).autocast is None
    finally:
        precision._cpuinfo.cache_clear()


def test_a_bad_value_is_one_sentence():
    with pytest.raises(InputError) as err:
        choose("bf16-mixd", "cpu")
    message = str(err.value)
    assert message.startswith("--dtype 'bf16-mixd' is not one of") and MIXED in message and message.count(".") == 1


@pytest.mark.parametrize("command", [["train", "--steps", "1"], ["generate", "What is 2 + 2?"],
                                     ["evaluate", "--prompts", "2"], ["score-principles", "--prompts", "2"]])
def test_a_bad_value_exits_3_before_any_model_loads(command, monkeypatch, tmp_path):
    from enigma_cli.models import loading

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_model", no_load)
    monkeypatch.chdir(tmp_path)
    refused(*invoke(*command, "--dtype", "mixed-bf16"), "--dtype", "mixed-bf16")


def test_mixed_passes_the_dry_run(tmp_path):
    rc, _, err = invoke("train", "--steps", "1", "--dtype", MIXED, "--dry-run", "--output-dir", tmp_path / "run")
    assert rc == 0, err


# -- loading -------------------------------------------------------------------------------------------------------
def test_load_marks_the_model_and_auto_says_what_it_chose(model_dir, monkeypatch, capsys):
    from enigma_cli.models.loading import _ANNOUNCED, load_model

    lm = load_model(str(model_dir), device="cpu", dtype=MIXED)
    assert lm.dtype == torch.float32 and lm.autocast == torch.bfloat16 and lm.precision == MIXED
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}
    assert precision.autocast_dtype(lm.model) == torch.bfloat16
    assert load_model(str(model_dir), device="cpu", dtype="float32").autocast is None
    assert capsys.readouterr().err == ""  # explicit values are not announced

    monkeypatch.setattr(precision, "_cpuinfo", lambda: WITH_BF16)
    monkeypatch.setattr(precision, "MIXED_MIN_PARAMS", 1000)  # the random tiny model counts as large here
    _ANNOUNCED.clear()
    lm = load_model(str(model_dir), device="cpu", dtype="auto")
    load_model(str(model_dir), device="cpu", dtype="auto")
    err = capsys.readouterr().err
    assert lm.autocast == torch.bfloat16 and lm.dtype == torch.float32
    assert err.count("\n") == 1 and err.startswith(f"{MIXED} precision: float32 weights") and "avx512_bf16" in err

    monkeypatch.setattr(precision, "_cpuinfo", lambda: WITHOUT)
    assert load_model(str(model_dir), device="cpu", dtype="auto").autocast is None
    assert "no bf16 instructions" in capsys.readouterr().err


# -- the estimators ------------------------------------------------------------------------------------------------
def _estimates(cast, under_autocast: bool) -> dict[str, torch.Tensor]:
    """Every estimator of the objective on the same inputs passed through ``cast``, under bf16 autocast or not."""
    from contextlib import nullcontext

    from enigma_cli.core import (
        grpo_advantages,
        grpo_loss,
        k3_kl,
        pointwise_critic,
        sami_loss,
        sinkhorn_divergence,
    )
    from enigma_cli.core.infonce import posterior_critic, sum_critic

    g = torch.Generator().manual_seed(0)
    S = -3 + torch.randn(3, 4, 4, generator=g)
    lengths = torch.randint(20, 200, (3, 4), generator=g)
    logp = -2 + torch.randn(8, 24, generator=g) * 0.5
    ref = logp + 0.05 * torch.randn(8, 24, generator=g)
    rewards = torch.rand(8, generator=g) * 3
    x, y = torch.nn.functional.normalize(torch.randn(2, 32, 16, generator=g), dim=2).unbind(0)
    with torch.autocast("cpu", dtype=torch.bfloat16) if under_autocast else nullcontext():
        adv = grpo_advantages(cast(rewards), 4)
        loss, stats = grpo_loss(cast(logp), None, adv, torch.ones(8, 24), ref_logp=cast(ref), beta=0.04)
        return {
            "advantages": adv, "grpo_loss": loss, "kl": stats["kl"], "k3": k3_kl(cast(logp), cast(ref)),
            "sami": sami_loss(cast(S))[0], "pointwise": pointwise_critic(cast(S), cast(S[:, 0])),
            "sum": sum_critic(cast(S), lengths), "posterior": posterior_critic(cast(S)),
            "sinkhorn": sinkhorn_divergence(cast(x), cast(y)),
        }


def test_the_estimators_compute_in_float32_under_autocast():
    """Under autocast, with float32 inputs or bf16 ones, every estimator returns float32 and equals its float32
    computation outside autocast on the same (bf16-rounded) values: nothing in between is rounded to bf16 (a bf16
    input is cast up first; Sinkhorn's cost matrix is not an autocast bf16 addmm)."""
    rounded = lambda t: t.bfloat16().float()  # the values a bf16 tensor holds, in float32
    exact = _estimates(rounded, under_autocast=False)
    for cast in (rounded, lambda t: t.bfloat16()):
        for key, value in _estimates(cast, under_autocast=True).items():
            assert value.dtype == torch.float32, key
            assert torch.allclose(value, exact[key], rtol=1e-6, atol=1e-7), key


# -- autocast reaches the model, the weights stay float32 ----------------------------------------------------------
def _linear_spy(trainer) -> list[tuple[str, torch.dtype]]:
    """(phase, output dtype) of every call of the first Linear of the policy and of the reference copy (full
    fine-tuning; under LoRA the reference is the policy): generation runs in inference mode, scoring without
    grad, the update with grad."""
    seen: list[tuple[str, torch.dtype]] = []

    def hook(module, args, out):
        phase = ("generation" if torch.is_inference_mode_enabled() else
                 "update" if torch.is_grad_enabled() else "scoring")
        seen.append((phase, out.dtype))

    for model in (trainer.model, getattr(trainer, "reference", None)):
        if model is not None:
            next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(hook)
    return seen


def _row(stepped) -> dict:
    """The metrics row of `Trainer.step` (which may return it with the step's episodes)."""
    return stepped[0] if isinstance(stepped, tuple) else stepped


def _trainer(model_dir, out, dtype: str, **options):
    from enigma_cli.models.loading import load_model
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.defaults import for_model
    from enigma_cli.train.run import plan
    from enigma_cli.train.trainer import Trainer

    cfg = TrainConfig(model=str(model_dir), steps=2, device="cpu", dtype=dtype, output_dir=str(out),
                      prompts_per_step=2, group_size=4, principles_per_prompt=2, max_new_tokens=12, **options)
    pset, examples = plan(cfg)
    lm = load_model(cfg.model, device="cpu", dtype=dtype, for_training=True)
    return Trainer(lm, examples, pset, for_model(cfg, lm.model))


@pytest.mark.parametrize("lora_r", [0, 4])
def test_mixed_autocasts_every_phase_and_keeps_float32_master_weights(model_dir, tmp_path, lora_r):
    trainer = _trainer(model_dir, tmp_path / "run", MIXED, lora_r=lora_r, lr=1e-3)
    seen = _linear_spy(trainer)
    row = _row(trainer.step())
    assert {phase for phase, _ in seen} == {"generation", "scoring", "update"}
    assert all(dtype == torch.bfloat16 for _, dtype in seen), seen
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trained and all(p in trainer.optimizer.state for p in trained)
    for p in trained:
        state = trainer.optimizer.state[p]
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert row["skipped"] == 0.0


def test_float32_does_not_autocast(model_dir, tmp_path):
    trainer = _trainer(model_dir, tmp_path / "run", "float32")
    seen = _linear_spy(trainer)
    trainer.step()
    assert seen and all(dtype == torch.float32 for _, dtype in seen)


def test_a_mixed_step_is_close_to_the_float32_one(enigma_tiny_dir, tmp_path, monkeypatch):
    """On the shipped enigma-tiny, one step on the same episodes: the loss and its terms agree to ~1e-2, the
    gradient points the same way; and they differ at all (autocast ran)."""
    from enigma_cli.train import trainer as trainer_mod

    trainers = {dtype: _trainer(enigma_tiny_dir, tmp_path / dtype, dtype, lr=1e-3) for dtype in ("float32", MIXED)}
    real, cache = trainer_mod.collect, {}

    def shared(*a, **k):  # the float32 trainer samples; the other steps on its episodes
        if "ep" not in cache:
            cache["ep"] = real(*a, **k)
        return copy.deepcopy(cache["ep"])

    monkeypatch.setattr(trainer_mod, "collect", shared)
    rows, grads = {}, {}
    for dtype, trainer in trainers.items():
        captured = {}

        def capture(optimizer, args, kwargs, captured=captured, trainer=trainer):
            captured.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                             if p.grad is not None})

        trainer.optimizer.register_step_pre_hook(capture)
        rows[dtype], grads[dtype] = _row(trainer.step()), captured
    a, b = rows["float32"], rows[MIXED]
    for key in ("loss", "loss_grpo", "loss_sami", "ot_divergence", "kl_ref", "mi_sym"):
        if key in a:
            assert b[key] == pytest.approx(a[key], rel=0.02, abs=1e-3), key
    flat = {d: torch.cat([g.flatten() for _, g in sorted(grads[d].items())]) for d in grads}
    cosine = torch.nn.functional.cosine_similarity(flat["float32"], flat[MIXED], dim=0)
    assert cosine > 0.99
    assert not torch.equal(flat["float32"], flat[MIXED])


@pytest.fixture
def enigma_tiny_dir():
    from conftest import ENIGMA_TINY_DIR

    if not (ENIGMA_TINY_DIR / "model.safetensors").exists():
        pytest.skip("enigma-tiny is not built")
    return ENIGMA_TINY_DIR


def test_reader_returns_float32_close_to_the_float32_read(enigma_tiny_dir):
    from enigma_cli.models.loading import load_model
    from enigma_cli.models.reader import read

    lm = load_model(str(enigma_tiny_dir), device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 400, (n,), generator=g).tolist() for n in (12, 20, 7)]
    completions = [torch.randint(3, 400, (n,), generator=g).tolist() for n in (9, 15, 4)]
    exact = read(lm.model, prompts, completions, layers=[2, 4])
    precision.mark(lm.model, torch.bfloat16)
    mixed = read(lm.model, prompts, completions, layers=[2, 4])
    assert mixed.logp.dtype == torch.float32 and all(v.dtype == torch.float32 for v in mixed.pooled.values())
    diff = (mixed.logp - exact.logp)[exact.mask].abs()
    assert 0 < float(diff.max()) < 0.3 and float(diff.mean()) < 0.05
    assert torch.allclose(mixed.seq_logp, exact.seq_logp, atol=0.05)


# -- the TRL backend -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, weights, autocast, bf16", [
    ("float32", torch.float32, None, False),
    ("auto", torch.float32, None, False),  # auto chose float32 for this model (a small one, or no bf16 CPU)
    ("auto", torch.float32, torch.bfloat16, True),  # auto chose bf16-mixed: TRL's bf16 is its CPU autocast
    (MIXED, torch.float32, None, True),  # asked for by name
    ("bfloat16", torch.bfloat16, None, True),
])
def test_trl_bf16_follows_the_precision(dtype, weights, autocast, bf16):
    from enigma_cli.trl.mapping import grpo_args
    from enigma_cli.trl.options import TrlTrainConfig

    cfg = TrlTrainConfig(backend="trl", dtype=dtype, lr=1e-3, lora_r=0)
    args = grpo_args(cfg, dtype=weights, device=torch.device("cpu"), autocast=autocast)
    assert args.bf16 is bf16 and args.fp16 is False and args.use_cpu
