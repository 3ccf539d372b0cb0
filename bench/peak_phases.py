"""Benchmark: where in enigma's training step the resident memory peaks, phase by phase (CPU).

A sampler thread reads the resident set size every millisecond and keeps the maximum per phase of each step:
generation, reference pass, forward, and the backward cut in four (until the log-probs' gradient is through the
logits, until the gradient reaches the last hidden state, until it reaches the input embeddings' output, and the
rest), then after the backward. With the LM head in tiles (`models.tiled`, every case but ``enigma-untiled*``)
there are no logits: the head's tiles and their gradient are one autograd node, so "backward: log-probs" runs
until the gradient reaches the last hidden state and there is no "backward: lm head". One of `peak_memory.py`'s
enigma cases, in this process:

    OMP_NUM_THREADS=1 .venv/bin/python bench/peak_phases.py --case enigma-gc
    OMP_NUM_THREADS=1 .venv/bin/python bench/peak_phases.py --case enigma        # and enigma-untiled: before/after
    OMP_NUM_THREADS=1 .venv/bin/python bench/peak_phases.py --case enigma-gc --releases 0 --dense-embedding-grad
    MALLOC_MMAP_THRESHOLD_=1048576 OMP_NUM_THREADS=1 .venv/bin/python bench/peak_phases.py --case enigma-gc --releases 0

``--releases N`` sets `train.memory`'s releases per backward (0: none); ``--dense-embedding-grad`` leaves a tied
embedding's input-side gradient dense. ``MALLOC_MMAP_THRESHOLD_`` (glibc) maps every block above that size on its
own, so freed blocks go back to the OS at once: the allocator's own bound on what releases can recover.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time


class PhaseSampler:
    """The maximum resident size seen while each phase label was set (read every ``interval`` seconds)."""

    def __init__(self, interval: float = 0.001):
        self.label, self.peaks, self.interval, self._stop = "start", {}, interval, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        from peak_memory import _rss_gib  # bench/peak_memory.py

        while not self._stop.is_set():
            self.peaks[self.label] = max(_rss_gib(), self.peaks.get(self.label, 0.0))
            time.sleep(self.interval)

    def stop(self):
        self._stop.set()
        time.sleep(5 * self.interval)


def main(argv: list[str] | None = None) -> None:
    from peak_memory import CASES  # bench/peak_memory.py

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--case", default="enigma-gc", choices=[c for c, v in CASES.items() if v is not None])
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--group-size", "-G", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--releases", type=int, default=None, help="releases per backward (default: train's)")
    p.add_argument("--dense-embedding-grad", action="store_true")
    args = p.parse_args(argv)

    import torch

    from enigma_cli.models import reader
    from enigma_cli.models.loading import load_model
    from enigma_cli.train import memory
    from enigma_cli.train import trainer as trainer_mod
    from enigma_cli.train.config import TrainConfig
    from enigma_cli.train.defaults import for_model
    from enigma_cli.train.run import plan

    sampler = PhaseSampler()
    calls = [0, 0.0]
    if memory._TRIM is not None:
        trim = memory._TRIM

        def timed(pad):
            t = time.perf_counter()
            trim(pad)
            calls[0], calls[1] = calls[0] + 1, calls[1] + time.perf_counter() - t

        memory._TRIM = timed
    if args.releases is not None:
        memory.RELEASES_PER_BACKWARD = args.releases
    if args.dense_embedding_grad:
        trainer_mod.sparse_tied_embedding_grad = lambda model: False
    step = [0]

    def label(name):
        sampler.label = f"step {step[0]}: {name}"

    def during(fn, name):
        def wrapped(*a, **k):
            before = sampler.label
            label(name)
            try:
                return fn(*a, **k)
            finally:
                sampler.label = before
        return wrapped

    trainer_mod.collect = during(trainer_mod.collect, "generation")
    trainer_mod.reference_pass = during(trainer_mod.reference_pass, "reference pass")
    trainer_mod.micro_loss = during(trainer_mod.micro_loss, "forward")
    backward = torch.Tensor.backward

    def traced_backward(self, *a, **k):
        label("backward: log-probs")
        backward(self, *a, **k)
        label("after the backward")

    torch.Tensor.backward = traced_backward
    collect = reader._collect

    def traced_collect(rows, logits, *a, **k):
        if logits.requires_grad:
            logits.register_hook(lambda g: label("backward: lm head"))
        return collect(rows, logits, *a, **k)

    reader._collect = traced_collect
    if args.case.startswith("enigma-untiled"):  # the objective's reads as they were before the tiled head
        from enigma_cli.train import objective

        objective.read = reader.read

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=args.model, steps=args.steps, prompts_per_step=args.prompts,
                          group_size=args.group_size, max_new_tokens=args.max_new_tokens, device="cpu",
                          dtype="float32", output_dir=tmp, **{"lora_r": 0, **CASES[args.case]})
        pset, examples = plan(cfg)
        sampler.label = "loading"
        lm = load_model(cfg.model, device="cpu", dtype="float32", for_training=True)
        trainer = trainer_mod.Trainer(lm, examples, pset, for_model(cfg, lm.model))
        del lm

        def on_output(module, name):
            def hook(mod, inputs, output):
                out = output[0] if isinstance(output, tuple) else output
                if torch.is_grad_enabled() and out.requires_grad:
                    out.register_hook(lambda g: label(name))
            module.register_forward_hook(hook)

        on_output(trainer.model.get_input_embeddings(), "backward: embedding")
        norm = getattr(getattr(trainer.model, "model", None), "norm", None)
        if norm is not None:
            on_output(norm, "backward: layers")
        times = []
        for s in range(args.steps):
            step[0] = s + 1
            label("other")
            t = time.perf_counter()
            trainer.step()
            times.append(time.perf_counter() - t)
    sampler.stop()
    print(f"model={args.model} case={args.case} releases={memory.RELEASES_PER_BACKWARD} "
          f"embedding grad={'dense' if args.dense_embedding_grad else 'sparse when tied'} "
          f"G={args.group_size} max_new_tokens={args.max_new_tokens}")
    for name, peak in sampler.peaks.items():
        print(f"{name:>32} {peak:6.2f} GiB")
    print(f"{'peak (ru_maxrss)':>32} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:6.2f} GiB")
    print(f"step seconds {', '.join(f'{t:.1f}' for t in times)}; malloc_trim calls {calls[0]}, "
          f"{1e3 * calls[1] / max(calls[0], 1):.1f} ms each")


if __name__ == "__main__":
    main()
