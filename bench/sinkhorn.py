"""Benchmark: enigma's debiased Sinkhorn divergence (forward + backward) against POT and GeomLoss.

Same process, same inputs, same eps. For each (n, d, case) it times forward+backward of

- ``ours``: ``enigma_cli.core.sinkhorn_divergence(x, y, eps)`` (float32, envelope gradients);
- ``pot-ot``: one ``ot.solve_sample(x, y, reg=eps, reg_type="KL", grad="envelope")`` (the cross term only);
- ``pot-div``: the debiased combination OT(x, y) - (OT(x, x) + OT(y, y)) / 2 of three such calls, i.e. the
  same quantity as ``ours``;
- ``geomloss``: ``SamplesLoss("sinkhorn", p=2, blur=sqrt(eps/2)... )`` when geomloss is importable (skipped
  otherwise). GeomLoss halves the cost, so its eps is set to eps/2 on the halved cost.

and prints the median wall time over ``--repeats`` runs, the peak memory of one run (growth of the resident set on CPU, sampled by a thread;
``torch.cuda.max_memory_allocated`` on CUDA), the L1 error of the column marginal of the cross-term plan each
implementation stops at (``marg L1``: how converged it is; POT stops on the L2 norm of that error, we on the L1
norm) and the time ratio peer/ours (> 1: ours is faster).

Cases: ``random`` (two independent unit-normalised Gaussian clouds) and ``paired``
(``y = normalize(x + 0.1 * noise)``, what ENIGMA's policy-vs-reference clouds look like).

    OMP_NUM_THREADS=1 .venv/bin/python bench/sinkhorn.py --sizes 256 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import warnings

import torch
import torch.nn.functional as F

from enigma_cli.core import sinkhorn_divergence
from enigma_cli.train.memory import release_freed_memory

EPS = 0.05
MAX_ITER = 1000
POT_TOL = 1e-6  # POT's rule: L2 norm of the column-marginal violation, checked every 10 iterations
# Ours runs at its default tol (1e-5 on the L1 norm of the same violation, which is ~sqrt(n) times the L2
# norm): the stricter of the two for n >= 100. The `marg L1` column shows the error each plan really has.


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_clouds(n: int, d: int, case: str, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1)
    if case == "random":
        y = F.normalize(torch.randn(n, d, generator=g), dim=1)
    elif case == "paired":
        y = F.normalize(x + 0.1 * torch.randn(n, d, generator=g), dim=1)
    else:
        raise ValueError(case)
    return x.to(device), y.to(device)


def run_ours(x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = sinkhorn_divergence(x, y, eps, max_iter=MAX_ITER)
    value.backward()
    return float(value)


def _pot_ot(ot, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return ot.solve_sample(x, y, reg=eps, reg_type="KL", grad="envelope", max_iter=MAX_ITER, tol=POT_TOL).value


def run_pot_ot(ot, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = _pot_ot(ot, x, y, eps)
    value.backward()
    return float(value)


def run_pot_div(ot, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = _pot_ot(ot, x, y, eps) - 0.5 * (_pot_ot(ot, x, x, eps) + _pot_ot(ot, y, y, eps))
    value.backward()
    return float(value)


def run_geomloss(loss, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = 2.0 * loss(x, y)  # GeomLoss's cost is |x-y|^2 / 2: twice its value at eps/2 is ours at eps
    value.backward()
    return float(value)


def cross_marginal_error(impl: str, x: torch.Tensor, y: torch.Tensor, eps: float) -> float | None:
    """L1 error ``sum_j |sum_i P_ij - b_j|`` of the column marginal of the cross-term plan an implementation returns."""
    if impl == "ours":
        from enigma_cli.core import entropic_ot

        _, f, g = entropic_ot(x, y, eps, max_iter=MAX_ITER, return_potentials=True)
        cost = torch.cdist(x.double(), y.double()) ** 2
        plan = torch.exp((f.double()[:, None] + g.double()[None, :] - cost) / eps) / (x.shape[0] * y.shape[0])
    elif impl.startswith("pot"):
        import ot

        plan = ot.solve_sample(x, y, reg=eps, reg_type="KL", max_iter=MAX_ITER, tol=POT_TOL).plan.double()
    else:
        return None
    return float((plan.sum(0) - 1.0 / y.shape[0]).abs().sum())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _peak_rss_growth(fn) -> float:
    """Peak growth of the resident set (MiB) during one call of ``fn``, sampled every 0.5 ms by a thread.

    tracemalloc does not see torch's CPU tensor buffers, so the RSS is what we can read on CPU. Approximate:
    the allocator may reuse memory freed earlier, so small figures (< a few MiB) are noise.
    """
    release_freed_memory()  # give freed heap memory back to the OS first, so that reused memory counts as growth
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return (max(peak[0], _rss_bytes()) - base) / 2**20


def measure(fn, device: torch.device, repeats: int) -> tuple[float, float, float]:
    """(median seconds, peak MiB of one run, value) after one warm-up run."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        value = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _peak_rss_growth(fn)
    return statistics.median(times), peak, value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024],
                   help="cloud sizes n (4096 is slow on CPU; add it explicitly)")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 512])
    p.add_argument("--cases", nargs="+", default=["random", "paired"], choices=["random", "paired"])
    p.add_argument("--eps", type=float, default=EPS)
    args = p.parse_args(argv)
    device = torch.device(args.device)

    import ot  # POT

    try:
        from geomloss import SamplesLoss
    except ImportError:
        SamplesLoss = None
        print("geomloss not importable: skipped")
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} POT={ot.__version__} "
          f"eps={args.eps} repeats={args.repeats}; time = median of repeats (forward+backward); "
          f"mem = peak of one run ({'cuda allocated' if device.type == 'cuda' else 'RSS growth'}, MiB)")
    header = (f"{'n':>5} {'d':>4} {'case':>7} | {'impl':>9} {'time ms':>9} {'mem MiB':>8} {'value':>11} "
              f"{'marg L1':>8} {'peer/ours':>9}")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        for d in args.dims:
            for case in args.cases:
                x, y = make_clouds(n, d, case, device)
                impls = [("ours", lambda x=x, y=y: run_ours(x, y, args.eps)),
                         ("pot-ot", lambda x=x, y=y: run_pot_ot(ot, x, y, args.eps)),
                         ("pot-div", lambda x=x, y=y: run_pot_div(ot, x, y, args.eps))]
                if SamplesLoss is not None:
                    loss = SamplesLoss("sinkhorn", p=2, blur=(args.eps / 2) ** 0.5, scaling=0.9, debias=True)
                    impls.append(("geomloss", lambda loss=loss, x=x, y=y: run_geomloss(loss, x, y, args.eps)))
                t_ours = None
                for name, fn in impls:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t, mem, value = measure(fn, device, args.repeats)
                        marg = cross_marginal_error(name, x, y, args.eps)
                    if name == "ours":
                        t_ours = t
                    marg_s = "-" if marg is None else f"{marg:.1e}"
                    print(f"{n:>5} {d:>4} {case:>7} | {name:>9} {t * 1e3:>9.1f} {mem:>8.1f} {value:>11.6f} "
                          f"{marg_s:>8} {t / t_ours:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
