"""Handing freed memory back to the operating system during a training step (CPU runs on glibc).

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks between 128 KiB and 32 MiB from its heap once its
dynamic mmap threshold has risen (it does after the first large free), and keeps the pages of freed blocks. In a
training step this matters twice: the sampler's and the scoring passes' transient tensors are freed before the
update, and inside the backward the activations are freed while the gradients are allocated, in other sizes, so the
gradients come on top of pages the heap keeps instead of reusing them. ``malloc_trim(0)`` returns every free page of
the heap (glibc ≥ 2.8 also releases whole free pages inside it).

What this saves and costs, and against what (every block above 1 MiB mapped and unmapped one by one, the
allocator's own way to hand memory back at once), is measured in BENCHMARKS.md, "Peak memory" (bench/peak_phases.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch


def _libc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


_TRIM = _libc_trim() if sys.platform.startswith("linux") else None

#: Releases per backward (more release a little more memory and cost a little more time: BENCHMARKS.md).
RELEASES_PER_BACKWARD = 4


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); a no-op off glibc.

    Called between the step's phases (after sampling, after the scoring passes, after the optimizer step) and,
    through `release_during_backward`, inside the backward.
    """
    if _TRIM is not None:
        _TRIM(0)


def release_during_backward(params: list[torch.nn.Parameter], times: int | None = None) -> list:
    """Call `release_freed_memory` at most ``times`` times (default `RELEASES_PER_BACKWARD`, 0: never) during
    every backward, spread over ``params``.

    A post-accumulate-grad hook on every ``len(params) // times``-th parameter from the second on: the backward
    reaches the parameters roughly from the last layer to the first, so each release comes after the activations
    of the layers above have been freed and before the gradients of the layers below are allocated, and the last
    one (on the parameter after the input embedding) before the embedding's gradient, the backward's last large
    allocation. Only on CPU parameters (CUDA has its own caching allocator) and only where ``malloc_trim`` exists.
    Returns the hooks' handles (a model handed to a second trainer would get a second set: remove them first).
    """
    times = RELEASES_PER_BACKWARD if times is None else times
    if _TRIM is None or times <= 0:
        return []
    params = [p for p in params if p.requires_grad and p.device.type == "cpu"]
    if not params:
        return []
    every = max(1, len(params) // times)
    return [p.register_post_accumulate_grad_hook(_release_hook) for p in params[min(1, len(params) - 1)::every][:times]]


def _release_hook(_param: torch.Tensor) -> None:
    release_freed_memory()


def sparse_tied_embedding_grad(model: torch.nn.Module) -> bool:
    """Make the input side of a tied, trainable embedding send a sparse gradient; returns whether it applied.

    With tied embeddings (``W`` both the input table and the output projection) the backward produces two
    gradients of ``W``: the output projection's, dense ``[V, H]``, at its start, and the input lookup's at its
    very end, which PyTorch builds as a second dense ``[V, H]`` tensor, zero but for the rows of the tokens read.
    That second tensor comes when every other gradient is already allocated, and the step peaks there (113 MB for
    SmolLM2's 49152 × 576 table). As a sparse tensor (``nn.Embedding.sparse``) it holds the incoming gradient's rows, one
    per token read; autograd adds it into the dense one, so ``W.grad`` is the same sum, dense as
    before (a hook densifies it should a backward ever reach only the input side). The values equal the dense
    path's up to the order of float additions. Applied only to a tied, trainable table on the CPU, where it was
    measured (BENCHMARKS.md). Callers must not apply it under DDP, whose reducer expects a sparse gradient from a
    sparse embedding (the trainer skips it when the world size is above 1).
    """
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embed, torch.nn.Embedding) or head is None or getattr(head, "weight", None) is not embed.weight:
        return False
    if not embed.weight.requires_grad or embed.sparse or embed.weight.device.type != "cpu":
        return False
    embed.sparse = True
    embed.weight.register_post_accumulate_grad_hook(_densify)
    return True


def _densify(param: torch.Tensor) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()
