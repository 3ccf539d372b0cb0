"""`enigma train`'s options as an `EnigmaGRPOConfig` (``--backend trl``).

The mapping, option by option (what `check_trl_options` refuses is listed there):

=========================================  ====================================================================
enigma                                     TRL
=========================================  ====================================================================
--steps                                    max_steps
--prompts-per-step P, -G G, -K K           per_device_train_batch_size = P·G / --grad-accum, num_generations =
                                           G/K, principles_per_prompt = K (so one generation per optimizer step)
--grad-accum                               gradient_accumulation_steps (= steps_per_generation)
--updates-per-generation                   num_iterations
--max-new-tokens, --temperature            max_completion_length, temperature (top_k 0, top_p 1)
--lr, --weight-decay, --max-grad-norm      learning_rate, weight_decay, max_grad_norm (fused AdamW both sides)
--warmup-steps                             warmup_steps, lr_scheduler_type "constant_with_warmup" (TRL's warm-up
                                           starts at 0, enigma's at 1/N)
--lora-r, --lora-alpha                     peft_config = LoraConfig(r, alpha, "all-linear")
--loss-type, --surrogate                   loss_type (clip: as is; cispo: "cispo"; sapo: "sapo")
--loss-type vespo                          loss_type "vespo" (TRL's VESPO; needs --importance-level token)
--importance-level                         importance_sampling_level
--top-entropy-quantile                     top_entropy_quantile (entropy masking of the policy loss)
--use-liger-kernel                         use_liger_kernel (layer kernels only, as TRL 1.16 applies them)
--epsilon, --epsilon-high, --beta          epsilon, epsilon_high, beta
--scale-rewards                            scale_rewards (advantages over the question's G, as enigma)
--reward, --format-weights, ...            reward_funcs (enigma's, one per term) and reward_weights
--saturated-reward                         one more reward_func, ``saturated`` (weight 1: the fallback term)
--sami/--lambda-sami, --sami-matrices      lambda_sami (0 with --no-sami), sami_matrices
--sami-prompts                             sami_prompts (per process and optimizer step, as enigma's)
--ot/--lambda-ot, --ot-layers, --ot-eps    lambda_ot (0 with --no-ot), ot_layers, ot_eps
--critic-metrics, --ref-metrics            critic_metrics, ref_metrics; --ref-dtype: ref_dtype
--gradient-checkpointing, --keep-dropout   gradient_checkpointing, disable_dropout = not --keep-dropout
--save-every, --save-total-limit           save_steps (and always the last step), save_total_limit
--save-model-only                          save_only_model
--report-to                                report_to (tensorboard in OUTPUT_DIR/tensorboard)
--use-vllm, --vllm-mode, ...               use_vllm, vllm_mode, vllm_server_base_url, vllm_gpu_memory_utilization
--push-to-hub, --hub-model-id              push_to_hub, hub_model_id
--seed, --output-dir, --device cpu         seed, output_dir, use_cpu
--dtype bfloat16                           bf16 (the weights are loaded in --dtype by enigma)
--dtype bf16-mixed (auto on a bf16 CPU)    bf16 on the float32 weights: accelerate's bf16 autocast around the
                                           model's forward (also on a CPU), the weights and AdamW state float32
=========================================  ====================================================================

Not mapped: ``--max-nonfinite`` (TRL does not skip a non-finite step; the run aborts after that many logged steps
in a row with a non-finite loss or gradient norm), ``--sampler`` (TRL generates), ``--kl-warn`` and ``--format``
(applied to the logged rows by the CLI).
"""

from __future__ import annotations

import warnings

import torch
from accelerate.utils import is_peft_model

from ..models.precision import MIXED, canonical
from .config import EnigmaGRPOConfig

SURROGATE_LOSS = {"clip": None, "cispo": "cispo", "sapo": "sapo"}


def grpo_args(cfg, *, dtype: torch.dtype, device: torch.device,
              autocast: torch.dtype | None = None) -> EnigmaGRPOConfig:
    """The `EnigmaGRPOConfig` of a resolved `TrainConfig` (``lr`` and ``lora_r`` already chosen for the model).

    ``dtype`` is the loaded weights' dtype and ``autocast`` the loaded model's (`LoadedModel.autocast`, which is
    what ``--dtype auto`` chose for it); either bf16 turns on TRL's ``bf16``. ``--dtype bf16-mixed`` does too.
    """
    if autocast is None:
        autocast = torch.bfloat16 if canonical(cfg.dtype) == MIXED else None
    k = cfg.principles_per_prompt
    layers = list(cfg.ot_layers) or None
    vllm = {}
    if cfg.use_vllm:
        vllm = {"use_vllm": True, "vllm_mode": cfg.vllm_mode,
                "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization}
        if cfg.vllm_server_url:
            vllm["vllm_server_base_url"] = cfg.vllm_server_url
    with warnings.catch_warnings():  # transformers 5 renames the field TRL still sets; not the user's concern
        warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
        return _config(cfg, k, layers, vllm, dtype, device, autocast)


def _config(cfg, k, layers, vllm, dtype, device, autocast) -> EnigmaGRPOConfig:
    return EnigmaGRPOConfig(
        output_dir=cfg.output_dir, max_steps=cfg.steps, seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size // cfg.grad_accum,
        gradient_accumulation_steps=cfg.grad_accum, num_generations=cfg.group_size // k, num_iterations=cfg.
        updates_per_generation, max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_k=0,
        top_p=1.0, learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="constant_with_warmup", max_grad_norm=cfg.max_grad_norm,
        loss_type=SURROGATE_LOSS[cfg.surrogate] or cfg.loss_type, importance_sampling_level=cfg.importance_level,
        epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta, scale_rewards=cfg.scale_rewards,
        sapo_temperature_pos=cfg.sapo_temperature_pos, sapo_temperature_neg=cfg.sapo_temperature_neg,
        gradient_checkpointing=cfg.gradient_checkpointing, disable_dropout=not cfg.keep_dropout,
        use_liger_kernel=cfg.use_liger_kernel, top_entropy_quantile=cfg.top_entropy_quantile,
        # ENIGMA
        principles=cfg.principles, principles_per_prompt=k, lambda_sami=cfg.lambda_sami if cfg.use_sami else 0.0,
        sami_matrices=cfg.sami_matrices, sami_prompts=cfg.sami_prompts,
        lambda_ot=cfg.lambda_ot if cfg.use_ot else 0.0, ot_layers=layers, ot_eps=cfg.ot_eps,
        critic_metrics=cfg.critic_metrics, ref_metrics=cfg.ref_metrics, ref_dtype=cfg.ref_dtype,
        completions_jsonl=True,
        # the run
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_every or cfg.steps,
        save_total_limit=cfg.save_total_limit, save_only_model=cfg.save_model_only, report_to=list(cfg.trackers)
        or "none", push_to_hub=cfg.push_to_hub, hub_model_id=cfg.hub_model_id, use_cpu=device.type == "cpu",
        bf16=dtype == torch.bfloat16 or autocast == torch.bfloat16, fp16=False, disable_tqdm=True, dataloader_num_workers=0, **vllm,
    )


def lora_config(cfg, model):
    """The LoRA adapter to train (None for full fine-tuning, or when the model already carries one)."""
    if not cfg.lora_r or is_peft_model(model):
        return None
    from peft import LoraConfig  # lazy: peft is an extra (pip install 'enigma-cli[peft]')

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
