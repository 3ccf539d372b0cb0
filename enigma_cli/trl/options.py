"""`enigma train`'s options for ``--backend trl``, and which of them TRL can honour, checked before anything loads
(no TRL import here, so `enigma train --help` stays quick).

`TrlTrainConfig` is `train.config.TrainConfig` plus the options only TRL's trainer has; it is the command's option
source, so the native loop's config carries none of them. `check_trl_options` runs inside its `check` (values
alone); `check_trl_environment` in the command, before `train.run.plan` (what the machine has: vLLM, a GPU).
Each refusal is one sentence naming the flag and what to do instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

from ..errors import InputError, require
from ..options import opt
from ..train.config import LOSS_TYPES, TrainConfig

TRL_LOSS_TYPES = ("vespo",)  # TRL 1.16's loss types that no --loss-type/--surrogate of the native loop names
VLLM_MODES = ("colocate", "server")


@dataclass(frozen=True)
class TrlTrainConfig(TrainConfig):
    """Every option of `enigma train`: the ENIGMA loop's (`TrainConfig`) and TRL's own, which need --backend trl."""

    loss_type: str = opt("grpo", "Loss aggregation (TRL's definitions; TRL's cispo is --surrogate cispo "
                                 "--loss-type dapo; vespo: TRL's VESPO, --backend trl only).",
                         choices=LOSS_TYPES + TRL_LOSS_TYPES)
    use_vllm: bool = opt(False, "Generate with vLLM (--backend trl; needs a GPU and `pip install vllm`).")
    vllm_mode: str = opt("colocate", "vLLM in the training processes (colocate) or a `trl vllm-serve` server.",
                         choices=VLLM_MODES)
    vllm_server_url: str | None = opt(None, "URL of the `trl vllm-serve` server (--vllm-mode server; default: "
                                            "TRL's, http://localhost:8000).")
    vllm_gpu_memory_utilization: float = opt(0.3, "Share of GPU memory vLLM may take (--vllm-mode colocate).",
                                             gt=0, le=1)
    push_to_hub: bool = opt(False, "Push checkpoints to the Hugging Face Hub (--backend trl).")
    use_liger_kernel: bool = opt(False, "Liger's layer kernels (RMSNorm, RoPE, SwiGLU; --backend trl; needs a GPU and "
                                        "`pip install liger-kernel`).")
    top_entropy_quantile: float = opt(1.0, "Keep in the policy loss only this top quantile of tokens by entropy "
                                           "(TRL's entropy masking, 0.2 in its paper; 1 keeps all; --backend trl).",
                                      ge=0, le=1)
    hub_model_id: str | None = opt(None, "Hub repository for --push-to-hub (default: the output folder's name).")

    def check(self) -> None:
        super().check()
        for flag, given in (("--use-vllm", self.use_vllm), ("--push-to-hub", self.push_to_hub),
                            ("--hub-model-id", self.hub_model_id is not None),
                            ("--vllm-server-url", self.vllm_server_url is not None),
                            ("--use-liger-kernel", self.use_liger_kernel),
                            ("--top-entropy-quantile", self.top_entropy_quantile != 1.0),
                            ("--loss-type vespo", self.loss_type in TRL_LOSS_TYPES)):
            require(not given or self.backend == "trl", f"{flag} needs --backend trl (TRL's GRPOTrainer provides it).")
        require(self.hub_model_id is None or self.push_to_hub, "--hub-model-id needs --push-to-hub.")
        require(self.vllm_server_url is None or self.vllm_mode == "server", "--vllm-server-url needs --vllm-mode server.")
        if self.backend == "trl":
            check_trl_options(self)


def trl_train_config(cfg: TrainConfig) -> TrlTrainConfig:
    """`cfg` with TRL's own options at their defaults where it has none (a `TrainConfig` built by a library user,
    a study or a bench)."""
    if isinstance(cfg, TrlTrainConfig):
        return cfg
    return TrlTrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig) if f.init})


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
