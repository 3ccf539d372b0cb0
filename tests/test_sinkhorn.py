"""Tests for enigma_cli.core.sinkhorn: entropic OT and the Sinkhorn divergence, checked against POT."""

import math
import warnings

import numpy as np
import ot
import pytest
import torch

from enigma_cli.core import entropic_ot, sinkhorn_divergence

EPSILONS = [0.05, 0.5, 1.0]


def _clouds(n, m, d, seed=0, shift=0.5, dtype=torch.float32):
    """Two unit-normalised point clouds (as in method.md §5: costs lie in [0, 4])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64) + shift, dim=1)
    return x.to(dtype), y.to(dtype)


def _weights(n, seed):
    w = np.random.default_rng(seed).uniform(0.1, 1.0, n)
    return w / w.sum()


def _pot_ot(x, y, eps, a=None, b=None, max_iter=20000):
    """POT's full entropic objective <P,C> + eps KL(P || a x b), converged in float64."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns when its 1e-12 marginal tolerance is not met in max_iter
        res = ot.solve_sample(x, y, a, b, metric="sqeuclidean", reg=eps, reg_type="KL", max_iter=max_iter, tol=1e-12)
    return float(res.value)


def _pot_divergence(x, y, eps, a=None, b=None):
    # POT's plain Sinkhorn converges slowly (sublinearly) on the self terms; their value is accurate long before.
    return _pot_ot(x, y, eps, a, b) - 0.5 * (_pot_ot(x, x, eps, a, a, 2000) + _pot_ot(y, y, eps, b, b, 2000))


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("n,m,d", [(40, 57, 3), (96, 64, 16), (30, 20, 64)])
def test_entropic_ot_matches_pot(n, m, d, eps):
    x, y = _clouds(n, m, d, seed=n + d)
    ours = entropic_ot(x, y, eps)
    assert ours.dtype == torch.float32 and ours.shape == ()
    assert ours.item() == pytest.approx(_pot_ot(x, y, eps), rel=1e-4)


@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_entropic_ot_matches_pot_with_weights(eps):
    x, y = _clouds(50, 35, 8, seed=3)
    a, b = _weights(50, 1), _weights(35, 2)
    ours = entropic_ot(x, y, eps, a=torch.tensor(a), b=torch.tensor(b))
    assert ours.item() == pytest.approx(_pot_ot(x, y, eps, a, b), rel=1e-4)
    # The weights matter: uniform weights give a clearly different value.
    assert abs(entropic_ot(x, y, eps).item() - ours.item()) > 1e-3


def test_value_is_the_primal_objective_of_the_plan():
    """<a,f> + <b,g> equals <P,C> + eps KL(P||a x b) for the plan built from the potentials (float64)."""
    x, y = _clouds(30, 45, 5, seed=7, dtype=torch.float64)
    a, b = torch.tensor(_weights(30, 3)), torch.tensor(_weights(45, 4))
    eps = 0.1
    value, f, g = entropic_ot(x, y, eps, a=a, b=b, tol=1e-12, max_iter=20000, return_potentials=True)
    assert f.shape == (30,) and g.shape == (45,) and not f.requires_grad
    cost = torch.cdist(x, y) ** 2
    plan = a[:, None] * b[None, :] * torch.exp((f[:, None] + g[None, :] - cost) / eps)
    torch.testing.assert_close(plan.sum(1), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(0), b, atol=1e-9, rtol=0)
    primal = (plan * cost).sum() + eps * (plan * torch.log(plan / (a[:, None] * b[None, :]))).sum()
    assert value.item() == pytest.approx(primal.item(), rel=1e-9)
    assert value.item() == pytest.approx(((a * f).sum() + (b * g).sum()).item(), rel=1e-9)


@pytest.mark.parametrize("eps", EPSILONS)
def test_sinkhorn_divergence_matches_pot(eps):
    x, y = _clouds(45, 60, 8, seed=11)
    ours = sinkhorn_divergence(x, y, eps)
    assert ours.dtype == torch.float32 and ours.shape == ()
    assert ours.item() == pytest.approx(_pot_divergence(x, y, eps), rel=1e-3, abs=1e-6)


def test_sinkhorn_divergence_matches_pot_with_weights():
    x, y = _clouds(40, 30, 4, seed=5)
    a, b = _weights(40, 5), _weights(30, 6)
    ours = sinkhorn_divergence(x, y, 0.05, a=torch.tensor(a), b=torch.tensor(b))
    assert ours.item() == pytest.approx(_pot_divergence(x, y, 0.05, a, b), rel=1e-3, abs=1e-6)


def test_sinkhorn_divergence_is_zero_only_for_identical_clouds():
    x, y = _clouds(64, 64, 16, seed=2)
    assert abs(sinkhorn_divergence(x, x.clone()).item()) < 1e-5
    assert sinkhorn_divergence(x, y).item() > 1e-2
    # A small perturbation gives a small but positive divergence.
    near = torch.nn.functional.normalize(x + 0.05 * torch.randn_like(x), dim=1)
    assert 0 < sinkhorn_divergence(x, near).item() < sinkhorn_divergence(x, y).item()


def test_stops_on_the_marginal_error_of_the_returned_plan():
    """Paired clouds (policy vs reference on the same tokens) stop early, with the promised marginal error.

    The potentials of such problems keep creeping along a nearly flat dual direction for thousands of
    iterations; a rule on their change ran to max_iter. The plan's column marginal is what `tol` bounds.
    """
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(256, 32, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 0.05 * torch.randn(256, 32, generator=g), dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run to max_iter would warn
        _, f, g_pot = entropic_ot(x, y, 0.05, max_iter=40, return_potentials=True)  # default tol=1e-5
    cost = torch.cdist(x.double(), y.double()) ** 2
    plan = torch.exp((f.double()[:, None] + g_pot.double()[None, :] - cost) / 0.05) / 256**2
    assert float((plan.sum(0) - 1 / 256).abs().sum()) < 1e-5  # the column error that tol bounds
    assert float((plan.sum(1) - 1 / 256).abs().sum()) < 1e-5  # rows are exact up to float32 round-off
    # The gradient of an early stop agrees with a float64 solve converged to 1e-12.
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    gx = torch.autograd.grad(entropic_ot(xg, yg, 0.05), xg)[0]
    xd = x.double().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.autograd.grad(entropic_ot(xd, y.double(), 0.05, tol=1e-12, max_iter=20000), xd)[0]
    assert float((gx.double() - ref).norm() / ref.norm()) < 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_sinkhorn_divergence_is_nonnegative(seed):
    n, m, d = 20 + 7 * seed, 33 - 3 * seed, [2, 8, 32, 128][seed]
    x, y = _clouds(n, m, d, seed=seed, shift=0.1 * seed)
    for eps in (0.05, 1.0):
        assert sinkhorn_divergence(x, y, eps).item() >= -1e-6


def _directional_fd(fn, x, y, h=1e-5, seed=0):
    """Central finite difference of fn along a random direction (dx, dy), and the autograd prediction."""
    g = torch.Generator().manual_seed(seed)
    dx, dy = torch.randn(x.shape, generator=g, dtype=x.dtype), torch.randn(y.shape, generator=g, dtype=y.dtype)
    fd = (fn(x + h * dx, y + h * dy) - fn(x - h * dx, y - h * dy)).item() / (2 * h)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    gx, gy = torch.autograd.grad(fn(xg, yg), (xg, yg))
    return fd, ((gx * dx).sum() + (gy * dy).sum()).item(), gx, gy


@pytest.mark.parametrize("eps", [0.05, 0.5])
@pytest.mark.parametrize("name", ["entropic_ot", "sinkhorn_divergence"])
def test_gradient_matches_finite_differences(name, eps):
    func = {"entropic_ot": entropic_ot, "sinkhorn_divergence": sinkhorn_divergence}[name]
    x, y = _clouds(12, 9, 3, seed=4, dtype=torch.float64)

    def fn(p, q):
        return func(p, q, eps, tol=1e-12, max_iter=50000)

    fd, ad, gx, gy = _directional_fd(fn, x, y)
    assert gx.shape == x.shape and gy.shape == y.shape
    assert ad == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_gradient_matches_finite_differences_float32():
    x, y = _clouds(16, 20, 4, seed=9)
    fd, ad, _, _ = _directional_fd(lambda p, q: sinkhorn_divergence(p, q, 0.5), x, y, h=1e-2)
    assert ad == pytest.approx(fd, rel=2e-2)


def test_gradient_matches_pot_envelope_gradient():
    x, y = _clouds(15, 18, 3, seed=6, dtype=torch.float64)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ot.solve_sample(xg, yg, reg=0.05, reg_type="KL", grad="envelope", max_iter=20000, tol=1e-13)
    px, py = torch.autograd.grad(res.value, (xg, yg))
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    gx, gy = torch.autograd.grad(entropic_ot(xg, yg, 0.05, tol=1e-12, max_iter=50000), (xg, yg))
    torch.testing.assert_close(gx, px, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gy, py, rtol=1e-6, atol=1e-9)


def test_divergence_gradient_vanishes_at_identical_clouds():
    """x = y minimises S_eps, so its gradient is 0 there (fails if the self terms' gradient is off by 2x)."""
    x, _ = _clouds(25, 1, 5, seed=8, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(sinkhorn_divergence(xg, x, 0.1), xg)
    assert grad.abs().max().item() < 1e-5
    xg = x.clone().requires_grad_()
    (grad_ot,) = torch.autograd.grad(entropic_ot(xg, x, 0.1), xg)
    assert grad_ot.abs().max().item() > 1e-3  # OT_eps alone is biased: not minimal at x = y


def _saved_bytes(fn):
    """Bytes autograd saves for backward while running fn()."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


@pytest.mark.parametrize("name", ["entropic_ot", "sinkhorn_divergence"])
def test_backward_memory_does_not_grow_with_iterations(name):
    func = {"entropic_ot": entropic_ot, "sinkhorn_divergence": sinkhorn_divergence}[name]
    x, y = _clouds(64, 48, 8, seed=1, shift=0.0)
    x.requires_grad_()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        few, v_few = _saved_bytes(lambda: func(x, y, 0.05, max_iter=10))
    many, v_many = _saved_bytes(lambda: func(x, y, 0.05, max_iter=2000))
    assert few == many > 0
    assert v_few.item() != v_many.item()  # the long run really did more iterations
    assert few < 20 * (64 * 48 + 64 * 64 + 48 * 48) * 4  # a handful of n x m buffers, no more


def test_bfloat16_inputs_compute_and_return_float32():
    x, y = _clouds(32, 40, 16, seed=12)
    xb, yb = x.bfloat16().requires_grad_(), y.bfloat16()
    for func in (entropic_ot, sinkhorn_divergence):
        value = func(xb, yb)
        assert value.dtype == torch.float32
        ref = func(xb.detach().float(), yb.float())
        assert value.item() == pytest.approx(ref.item(), rel=1e-5)
        (grad,) = torch.autograd.grad(value, xb)
        assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


def test_autocast_does_not_lower_the_precision_of_the_cost():
    x, y = _clouds(48, 40, 64, seed=14)
    ref = sinkhorn_divergence(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sinkhorn_divergence(x, y)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ref.item(), rel=1e-6)


def test_float64_inputs_stay_float64():
    x, y = _clouds(10, 12, 3, dtype=torch.float64)
    assert entropic_ot(x, y).dtype == torch.float64
    assert sinkhorn_divergence(x, y.float()).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": torch.zeros(5), "y": torch.zeros(4, 3)}, r"\(5,\).*\(4, 3\)"),
        ({"x": torch.zeros(5, 3), "y": torch.zeros(4, 2)}, r"\(5, 3\).*\(4, 2\)"),
        ({"x": torch.zeros(0, 3), "y": torch.zeros(4, 3)}, r"at least one point"),
        ({"eps": 0.0}, r"eps"),
        ({"eps": -1.0}, r"eps"),
        ({"a": torch.ones(4) / 4}, r"a must have shape \(5,\).*\(4,\)"),
        ({"b": torch.ones(4)}, r"b must be nonnegative and sum to 1"),
        ({"max_iter": 0}, r"max_iter"),
    ],
)
@pytest.mark.parametrize("func", [entropic_ot, sinkhorn_divergence])
def test_invalid_inputs_raise_value_error(func, kwargs, match):
    args = {"x": torch.rand(5, 3), "y": torch.rand(4, 3)} | kwargs
    with pytest.raises(ValueError, match=match):
        func(**args)


def test_non_finite_input_gives_nan_without_running_to_max_iter():
    x, y = _clouds(10, 12, 3)
    x[0, 0] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "did not converge" warning: the loop stops at the first check
        assert math.isnan(entropic_ot(x, y).item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _clouds(128, 96, 32, seed=13)
    xc = x.cuda().requires_grad_()
    value = sinkhorn_divergence(xc, y.cuda())
    assert value.device.type == "cuda"
    value.backward()
    assert value.item() == pytest.approx(sinkhorn_divergence(x, y).item(), rel=1e-4)
    assert xc.grad is not None and xc.grad.device.type == "cuda"


def test_overrelaxation_safeguard_falls_back_to_plain_sinkhorn(monkeypatch):
    """At ω = 1.99 over-relaxed Sinkhorn oscillates on this problem; the safeguard must catch the growing error
    and finish with plain iterations (without it the value is off by ~5 and the solve does not converge)."""
    import enigma_cli.core.sinkhorn as sk

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(60, 8, generator=g, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(50, 8, generator=g, dtype=torch.float64) + 0.5, dim=-1)
    monkeypatch.setattr(sk, "_OVERRELAX", 1.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sk.SinkhornConvergenceWarning)
        ours = float(sk.entropic_ot(x, y, eps=0.02, max_iter=3000, tol=1e-9))
    ref = float(ot.solve_sample(x.numpy(), y.numpy(), reg=0.02, reg_type="KL", max_iter=100000, tol=1e-12).value)
    assert ours == pytest.approx(ref, abs=1e-8)
