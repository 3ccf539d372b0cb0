"""Mixed precision: the dtype the weights are held in, and whether the model's forward passes run under autocast.

``--dtype`` takes:

- ``float32``, ``bfloat16``, ``float16`` (``fp32``, ``bf16``, ``fp16``): the weights in that dtype, no autocast.
  ``bfloat16`` trains bf16 weights with a bf16 optimizer state (no float32 master copy).
- ``bf16-mixed`` (``mixed``, ``bf16-autocast``; PyTorch Lightning's name): float32 weights, so float32 gradients
  and AdamW state, and every forward pass of the model (sampling, scoring, the update) under
  ``torch.autocast(bfloat16)``: matrix products in bf16, the rest as autocast's op lists say.
- ``auto``: on a CUDA device with bf16, ``bfloat16`` weights (as before); on a CPU with bf16 instructions
  (``avx512_bf16`` or AMX, read from ``/proc/cpuinfo`` on Linux; elsewhere taken as absent) ``bf16-mixed`` for a
  model of at least `MIXED_MIN_PARAMS` parameters and ``float32`` below; else ``float32``. The choice is printed
  once on stderr, with its reason.

Where autocast applies: `mark` records the choice on the loaded model, and the two places where a model runs,
`sampler.Sampler.generate` and `reader.read`, enter `autocast` around their forwards, so every command (and the
training loop, whose rollout, reference pass and update go through them) gets it without code of its own. The
loss, the estimators (Sinkhorn, InfoNCE, the critic, advantages) and the backward run outside autocast on the
float32 log-probs and pooled states that `reader.read` returns; `core.sinkhorn` also turns autocast off itself.

Why float32 below `MIXED_MIN_PARAMS` (BENCHMARKS.md, "Mixed precision on the CPU"): on enigma-tiny (0.7M
parameters, hidden size 128) a bf16 matrix product is too small to pay for the casts around it.
"""

from __future__ import annotations

import functools
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from enigma_cli.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIXED = "bf16-mixed"
DTYPE_NAMES = ("auto", *DTYPES, MIXED)
ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
           "mixed": MIXED, "bf16-autocast": MIXED, "autocast": MIXED}
#: The CPU flags (Linux /proc/cpuinfo) that say bf16 arithmetic runs in hardware.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: The smallest model that ``--dtype auto`` trains under bf16 autocast on a CPU (BENCHMARKS.md: slower on the 0.7M
#: enigma-tiny, faster on the 6M qwen2-mini shape and on SmolLM2-135M).
MIXED_MIN_PARAMS = 2_000_000
#: The attribute `mark` sets on a model (peft wrappers pass attribute reads through to the model they wrap).
_ATTR = "_enigma_autocast"


@dataclass(frozen=True)
class Precision:
    """What ``--dtype`` resolved to: the weights' dtype, the autocast dtype (None: off), and why (for the line
    that ``auto`` prints)."""

    weights: torch.dtype
    autocast: torch.dtype | None = None
    why: str = ""

    @property
    def name(self) -> str:
        """``bf16-mixed`` or the weights' dtype name."""
        return MIXED if self.autocast is not None else str(self.weights).removeprefix("torch.")

    def describe(self) -> str:
        """The one line ``--dtype auto`` prints, e.g. ``bf16-mixed precision: float32 weights ... (auto, ...)``."""
        what = (f"{self.name} precision: float32 weights and optimizer state, bf16 autocast"
                if self.autocast is not None else f"{self.name} precision, no autocast")
        return f"{what} (auto, {self.why}; set --dtype float32 or {MIXED} to choose)"


def canonical(dtype: str | None) -> str:
    """The ``--dtype`` name `dtype` stands for; an unknown one is an InputError (exit 3) naming the choices."""
    name = (dtype or "auto").strip().lower()
    name = ALIASES.get(name, name)
    if name != "auto" and name not in DTYPES and name != MIXED:
        raise InputError(f"--dtype '{dtype}' is not one of {', '.join(DTYPE_NAMES)}.")
    return name


@functools.cache
def _cpuinfo() -> str:
    if not sys.platform.startswith("linux"):
        return ""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_bf16_flag(cpuinfo: str | None = None) -> str | None:
    """The first of `BF16_FLAGS` among the CPU's flags (``cpuinfo``: the text of /proc/cpuinfo, read when None),
    or None: no bf16 in hardware, or not Linux (then we cannot tell, and take float32)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return next((f for f in BF16_FLAGS if f in flags), None)


def choose(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu", n_params: int | None = None,
           *, cpuinfo: str | None = None) -> Precision:
    """The `Precision` of ``--dtype`` on ``device`` for a model of ``n_params`` parameters (None: not loaded yet,
    which can only change whether autocast is on, never the weights' dtype)."""
    if isinstance(dtype, torch.dtype):
        return Precision(dtype)
    name = canonical(dtype)
    if name == MIXED:
        return Precision(torch.float32, torch.bfloat16, f"--dtype {MIXED}")
    if name != "auto":
        return Precision(DTYPES[name])
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, None, "on a CUDA device with bfloat16")
        return Precision(torch.float32, None, "on a CUDA device without bfloat16")
    if dev.type != "cpu":
        return Precision(torch.float32, None, f"on a {dev.type} device")
    flag = cpu_bf16_flag(cpuinfo)
    if flag is None:
        return Precision(torch.float32, None, "this CPU has no bf16 instructions (avx512_bf16 or AMX)")
    size = "" if n_params is None else f"for a model of {n_params / 1e6:.1f}M parameters "
    if n_params is not None and n_params < MIXED_MIN_PARAMS:
        return Precision(torch.float32, None, f"{size.rstrip()}: below {MIXED_MIN_PARAMS / 1e6:g}M bf16 autocast is slower, "
                                              f"although this CPU has {flag}")
    return Precision(torch.float32, torch.bfloat16, f"{size}on a CPU with {flag}")


def mark(model, dtype: torch.dtype | None) -> None:
    """Record on ``model`` the dtype its forwards autocast to (None: off); read by `autocast`."""
    setattr(model, _ATTR, dtype)


def autocast_dtype(model) -> torch.dtype | None:
    """The autocast dtype `mark` recorded on ``model`` (through DDP's ``.module`` and peft's wrappers), or None."""
    return getattr(getattr(model, "module", model), _ATTR, None)


def autocast(model):
    """``torch.autocast`` on ``model``'s device type to its marked dtype, or a no-op context when it has none."""
    dtype = autocast_dtype(model)
    if dtype is None:
        return nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=dtype)
