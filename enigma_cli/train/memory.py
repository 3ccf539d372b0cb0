"""Handing freed memory back to the operating system during a training step (CPU runs on glibc).

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks between 128 KiB and 32 MiB from its heap once its
dynamic mmap threshold has risen (it does after the first large free), and keeps the pages of freed blocks. In a
training step this matters twice: the sampler's and the scoring passes' transient tensors are freed before the
update, and inside the backward the activations are freed while the gradients are allocated, in other sizes, so the
gradients come on top of pages the heap keeps instead of reusing them. ``malloc_trim(0)`` returns every free page of
the heap (glibc ≥ 2.8 also releases whole free pages inside it).

Measured on SmolLM2-135M, full fine-tuning (BENCHMARKS.md, "Peak memory"): without a release inside the backward
the heap held 0.29 GiB more at the step's peak (3.21 GiB) than a run whose blocks above 1 MiB are all mapped and
unmapped one by one (``MALLOC_MMAP_THRESHOLD_=1048576``: 2.92 GiB, but 5–10% more CPU time in page faults). Four
releases spread over the backward bring the peak to 2.99 GiB (16: 2.96, 32: 2.92) for 1–2 ms each (15 ms in a
16 s step); on enigma-tiny they add 3–7 ms to a 0.7 s step.
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

#: Releases per backward (more release a little more memory and cost a little more time; see the module's note).
RELEASES_PER_BACKWARD = 4


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); a no-op off glibc.

    Called between the step's phases (after sampling, after the scoring passes, after the optimizer step) and,
    through `release_during_backward`, inside the backward.
    """
    if _TRIM is not None:
        _TRIM(0)


def release_during_backward(params: list[torch.nn.Parameter], times: int = RELEASES_PER_BACKWARD) -> list:
    """Call `release_freed_memory` ``times`` times during every backward, spread over ``params``.

    A post-accumulate-grad hook on every ``len(params) // times``-th parameter: the backward reaches the
    parameters from the last layer to the first, so each release comes after the activations of the layers
    above have been freed and before the gradients of the layers below are allocated. Only on CPU parameters
    (CUDA has its own caching allocator) and only where ``malloc_trim`` exists. Returns the hook handles.
    """
    if _TRIM is None:
        return []
    params = [p for p in params if p.requires_grad and p.device.type == "cpu"]
    if not params:
        return []
    every = max(1, len(params) // times)
    return [p.register_post_accumulate_grad_hook(_release_hook) for p in params[::every]]


def _release_hook(_param: torch.Tensor) -> None:
    release_freed_memory()


def sparse_tied_embedding_grad(model: torch.nn.Module) -> bool:
    """Make the input side of a tied, trainable embedding send a sparse gradient; returns whether it applied.

    With tied embeddings (``W`` both the input table and the output projection) the backward produces two
    gradients of ``W``: the output projection's, dense ``[V, H]``, at its start, and the input lookup's at its
    very end, which PyTorch builds as a second dense ``[V, H]`` tensor, zero but for the rows of the tokens read.
    That second tensor comes when every other gradient is already allocated, and the step peaks there (113 MB for
    SmolLM2's 49152 × 576 table). As a sparse tensor (``nn.Embedding.sparse``) it holds only those rows; autograd
    adds it into the dense one, so ``W.grad`` is the same sum, dense as before (a hook densifies it should a
    backward ever reach only the input side). The values equal the dense path's up to the order of float
    additions. Not applied to an untied or frozen embedding (nothing to gain), nor under DDP, whose reducer
    expects a sparse gradient from a sparse embedding.
    """
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embed, torch.nn.Embedding) or head is None or getattr(head, "weight", None) is not embed.weight:
        return False
    if not embed.weight.requires_grad or embed.sparse:
        return False
    embed.sparse = True
    embed.weight.register_post_accumulate_grad_hook(_densify)
    return True


def _densify(param: torch.Tensor) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()
