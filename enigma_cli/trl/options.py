"""Which `enigma train` options ``--backend trl`` can honour, checked before anything loads (no TRL import here).

`check_trl_options` runs inside `TrainConfig.check` (values alone); `check_trl_environment` in `train.run.plan`
(what the machine has: vLLM, a GPU). Each refusal is one sentence naming the flag and what to do instead.
"""

from __future__ import annotations

import importlib.util

from ..errors import InputError


def check_trl_options(cfg) -> None:
    """Refuse the option combinations TRL's GRPOTrainer cannot run."""
    m = cfg.group_size // cfg.principles_per_prompt
    if m < 2:
        raise InputError(f"--backend trl needs at least 2 completions per principle (TRL's num_generations), not "
                         f"{m}: raise --group-size to {2 * cfg.principles_per_prompt} or more.")
    if cfg.loss_type == "vespo" and (cfg.surrogate != "clip" or cfg.importance_level != "token"):
        raise InputError("--loss-type vespo is TRL's VESPO, which gates its own sequence-level weights; pass "
                         "--importance-level token and leave --surrogate clip.")
    if cfg.surrogate == "cispo" and cfg.loss_type != "dapo":
        raise InputError("--surrogate cispo runs under --backend trl as TRL's loss_type cispo, which aggregates like "
                         "dapo; pass --loss-type dapo.")
    if cfg.surrogate == "sapo" and cfg.loss_type != "grpo":
        raise InputError("--surrogate sapo runs under --backend trl as TRL's loss_type sapo, which aggregates like "
                         "grpo; pass --loss-type grpo.")
    if cfg.sampler in ("shared", "lean"):
        raise InputError(f"--sampler {cfg.sampler} is enigma's own sampler; --backend trl generates with transformers "
                         "or with vLLM (--use-vllm): use --sampler auto.")
    if cfg.dtype == "float16":
        raise InputError("--dtype float16 under --backend trl would train float16 weights, which transformers' "
                         "Trainer refuses; use bfloat16, or float32 with `accelerate launch --mixed_precision fp16`.")


def check_trl_environment(cfg, device) -> None:
    """vLLM (or Liger) installed and a GPU to run it on, when --use-vllm (or --use-liger-kernel) asks for it.

    Liger composes with the ENIGMA terms in TRL 1.16: TRL applies only its layer kernels (its fused linear
    cross-entropy would replace the forward that TRL's fused LM head patches, and TRL refuses it), and the SAMI and
    OT terms read hidden states through hooks on the decoder layers, which the layer kernels keep."""
    if cfg.use_liger_kernel:
        if importlib.util.find_spec("liger_kernel") is None:
            raise InputError("--use-liger-kernel needs the liger-kernel package: pip install liger-kernel (on a "
                             "machine with a GPU).")
        if getattr(device, "type", str(device)) != "cuda":
            raise InputError("--use-liger-kernel needs a GPU (Liger's kernels are Triton), and this run is on the "
                             "CPU; drop --use-liger-kernel or use --device cuda.")
    if not cfg.use_vllm:
        return
    if importlib.util.find_spec("vllm") is None:
        raise InputError("--use-vllm needs the vllm package: pip install vllm (on a machine with a GPU).")
    if getattr(device, "type", str(device)) != "cuda":
        raise InputError("--use-vllm needs a GPU, and this run is on the CPU; drop --use-vllm or use --device cuda.")
