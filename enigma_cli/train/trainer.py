"""The `enigma train` loop: generate → reward → advantages → ENIGMA objective → update, with checkpoints.

Deviations and choices, stated once:
- Our own loop rather than a TRL subclass, so one policy forward yields the GRPO log-probs, the SAMI critic
  entries and the OT hidden states (`objective.py`).
- All randomness of a step (prompts, principles, sampling seed) is a function of (seed, step, rank), so `--resume`
  reproduces the uninterrupted run; optimizer, scheduler and RNG states are restored too.
- The reference is a frozen copy of the starting model (in ``--ref-dtype``), held only when something needs it
  (`objective.needs_reference`: β > 0, the OT term, or the reference metrics); under LoRA it is the same model
  with the adapter disabled, so it costs no memory.
- Dropout is switched off in the policy (and so in the reference copy) unless ``--keep-dropout``: rollouts,
  scoring and the update then see one distribution, and on-policy importance ratios are exactly 1.
- `--prompts-per-step` is per process under DDP (like TRL's per-device batch).
- A non-finite loss or gradient skips the step (counted); `max_nonfinite` in a row aborts the run.
- On the CPU, freed heap goes back to the OS between the step's phases and inside the backward, and a tied
  embedding's input side sends a sparse gradient (`memory.py`): the same gradients, a lower peak.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel as DDP

from ..core import normalize_answer
from ..core.answer_stats import group_answer_stats, majority_vote
from ..errors import EnigmaError
from ..models.hidden import num_layers, resolve_layers
from . import distributed as dist_utils
from .checkpoint import find_checkpoint, load_state, save_checkpoint, set_rng_state
from .episodes import Episodes, collect
from .memory import release_during_backward, release_freed_memory, sparse_tied_embedding_grad
from .objective import Forward, micro_loss, needs_reference, reference_pass
from .params import from_train_config, rollout_from_train_config


def default_layers(num_layers: int) -> list[int]:
    """One middle layer and the last (method.md §5); hidden-state index 0 is the embeddings."""
    return sorted({max(1, num_layers // 2), num_layers})


class Trainer:
    """Holds the policy, reference, optimizer and step counter; `step()` returns one metrics row and its episodes."""

    def __init__(self, lm, examples, pset, cfg, *, resume: str | None = None, write_config=None):
        """``cfg`` must have its per-model defaults resolved (`defaults.resolve_for_model`): the trainer uses its
        configuration as given and changes none of it."""
        if cfg.lr is None or cfg.lora_r is None:
            raise ValueError("Trainer needs a TrainConfig with lr and lora_r chosen: resolve the per-model defaults "
                             "first with train.defaults.resolve_for_model(cfg, parameter_count(model)).")
        self.cfg, self.examples, self.pset = cfg, examples, pset
        self.objective = from_train_config(cfg)  # what each term of the loss reads
        self.rollout = rollout_from_train_config(cfg)  # what a generation reads
        self.tokenizer, self.device = lm.tokenizer, lm.device
        self.rank, self.world = dist_utils.init(lm.device)
        torch.manual_seed(cfg.seed)
        model = lm.model
        if not cfg.keep_dropout:
            disable_dropout(model)
        self.lora = cfg.lora_r > 0
        self.reference = None
        if not self.lora and needs_reference(cfg):
            self.reference = frozen_copy(model, reference_dtype(cfg.ref_dtype, lm.dtype))
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        if self.lora:
            from peft import LoraConfig, get_peft_model  # lazy: peft costs enigma --help ~1.9 s

            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear",
                                                     task_type="CAUSAL_LM"))
        model.train()
        self.model = model
        self.wrapped = model
        if self.world > 1:
            self.wrapped = DDP(model, device_ids=[lm.device.index] if lm.device.type == "cuda" else None)
        else:  # DDP's reducer would expect a sparse gradient from a sparse embedding
            sparse_tied_embedding_grad(model)  # a lower peak at the end of the backward (train.memory)
        n_layers = num_layers(model)
        # checked here, before run() writes anything, rather than at the first forward
        self.layers = list(resolve_layers(n_layers, cfg.ot_layers, what="--ot-layers").values()) \
            or default_layers(n_layers)
        params = [p for p in model.parameters() if p.requires_grad]
        release_during_backward(params)
        self.optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(cfg.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.pad_id = self.tokenizer.pad_token_id
        self.step_no = 0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.write_config = write_config
        if resume:
            self._resume(find_checkpoint(resume, Path(cfg.output_dir)))

    def close(self) -> None:
        """Drop the DDP wrapper while the process group still exists (call before `distributed.shutdown`).

        Freed after the group was destroyed, DDP's reducer would hold the group's last reference and join gloo's
        worker threads while holding the GIL; a worker still freeing a tensor that needs the GIL then waits for
        ever (a teardown deadlock seen under torchrun on the CPU). DDP's hooks refer to it, so it is freed by the
        cycle collector, run here.
        """
        if self.wrapped is not self.model:
            self.wrapped = self.model
            gc.collect()

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save(self) -> Path | None:
        if not dist_utils.is_main():
            return None
        return save_checkpoint(Path(self.cfg.output_dir), self.step_no, self.model, self.tokenizer, self.optimizer,
                               self.scheduler, {"nonfinite_total": self.nonfinite_total},
                               config_writer=self.write_config, model_only=self.cfg.save_model_only)

    def _resume(self, path: Path) -> None:
        state = load_state(path)
        if self.lora:
            from peft import set_peft_model_state_dict  # lazy: peft costs enigma --help ~1.9 s

            set_peft_model_state_dict(self.model, load_file(str(path / "adapter_model.safetensors")))
        else:
            weights = load_file(str(path / "model.safetensors"))
            missing, unexpected = self.model.load_state_dict(weights, strict=False)
            bad = [k for k in missing if not k.endswith("lm_head.weight")] + list(unexpected)
            if bad:
                raise EnigmaError(f"checkpoint {path} does not match the model (e.g. {bad[0]}).")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step_no = int(state["step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))

    # -- one step ----------------------------------------------------------------------------------------------
    @contextmanager
    def _reference_model(self):
        if self.lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.reference

    def step(self) -> tuple[dict, Episodes]:
        """One optimisation step: generate and reward the step's completions, score them under the reference (and
        the old policy, when ``--updates-per-generation`` > 1), update the policy, and return the step's metrics
        row (`_metrics`) with its episodes (the completions, their rewards and advantages).

        A non-finite loss or gradient skips the update (`_update`), is counted, and raises `EnigmaError` after
        ``--max-nonfinite`` in a row (`_count_nonfinite`).
        """
        step = self.step_no + 1
        t0 = time.perf_counter()
        ep = self._generate(step)
        t_gen = time.perf_counter() - t0
        t1 = time.perf_counter()
        ref, old = self._score(ep)
        t_score = time.perf_counter() - t1
        t2 = time.perf_counter()
        metrics, grad_norm, skipped = self._update(ep, ref, old)
        self._count_nonfinite(skipped, step, metrics, grad_norm)
        self.scheduler.step()
        t_update = time.perf_counter() - t2
        self.step_no = step
        return self._metrics(ep, metrics, grad_norm, t_gen, t_score, t_update, skipped), ep

    def _generate(self, step: int) -> Episodes:
        """The step's completions, rewards and advantages, sampled from the policy in eval mode."""
        self.model.eval()
        ep = collect(self.model, self.tokenizer, self.examples, self.pset, self.rollout, step, self.rank)
        release_freed_memory()  # the sampler's transient buffers
        return ep

    def _score(self, ep: Episodes) -> tuple[Forward | None, Forward | None]:
        """The reference's pass (when anything needs π_ref) and the old policy's (only with μ > 1), no graph."""
        cfg, temperature = self.cfg, self.objective.temperature
        ref = None
        if needs_reference(cfg):
            with self._reference_model() as ref_model:
                ref = reference_pass(ref_model, ep, self.layers, temperature)
        old = reference_pass(self.model, ep, None, temperature) if cfg.updates_per_generation > 1 else None
        release_freed_memory()
        return ref, old

    def _update(self, ep: Episodes, ref: Forward | None, old: Forward | None) -> tuple[dict, float, bool]:
        """μ policy updates on the step's episodes: (the metrics' mean over every micro-step, the last gradient
        norm, whether the update was skipped). The first non-finite loss or gradient norm stops the updates, and no
        optimizer step is taken with it."""
        self.model.train()
        totals = MetricMean()
        grad_norm = float("nan")
        for _ in range(self.cfg.updates_per_generation):
            finite = self._accumulate(ep, ref, old, totals)
            if finite:
                grad_norm = self._clip_gradients()
                finite = math.isfinite(grad_norm)
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                return totals.mean(), grad_norm, True
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # free the gradients now, not at the next step's update
            release_freed_memory()
        return totals.mean(), grad_norm, False

    def _accumulate(self, ep: Episodes, ref: Forward | None, old: Forward | None, totals: MetricMean) -> bool:
        """Forward and backward of every micro-batch, the gradients summed over them (their loss shares add up to
        the batch loss). False, before that micro-batch's backward, when its loss is non-finite on any rank."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        num_items = sum(len(c) for c in ep.completion_ids)
        per_micro = cfg.prompts_per_step // cfg.grad_accum
        for a in range(cfg.grad_accum):
            prompts = range(a * per_micro, (a + 1) * per_micro)
            # DDP syncs gradients only in the last micro-batch's backward
            sync = nullcontext() if (self.world == 1 or a == cfg.grad_accum - 1) else self.wrapped.no_sync()
            with sync:
                loss, metrics = micro_loss(self.wrapped, ep, prompts, self.objective, layers=self.layers, ref=ref,
                                           old=old, num_items=num_items, accum_steps=cfg.grad_accum)
                totals.add(metrics)  # even when non-finite, so a skipped step's row has the same columns
                if not dist_utils.all_ranks_true(bool(torch.isfinite(loss))):
                    return False  # on every rank at once: a rank that went on to backward() would hang
                loss.backward()
        return True

    def _clip_gradients(self) -> float:
        """Clip the gradient to ``--max-grad-norm``; returns its norm before clipping."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))

    def _count_nonfinite(self, skipped: bool, step: int, metrics: dict, grad_norm: float) -> None:
        """Count a skipped step; ``--max-nonfinite`` in a row abort the run, naming the term that went non-finite."""
        if not skipped:
            self.nonfinite_in_row = 0
            return
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        if self.nonfinite_in_row >= self.cfg.max_nonfinite:
            raise EnigmaError(f"{self.nonfinite_in_row} steps in a row had a non-finite loss or gradient "
                              f"(last at step {step}: {nonfinite_cause(self.cfg, metrics, grad_norm)}).")

    def _metrics(self, ep: Episodes, acc: dict, grad_norm, t_gen, t_score, t_update, skipped) -> dict:
        r = ep.rewards
        lengths = torch.tensor([len(c) for c in ep.completion_ids], dtype=torch.float32)
        gen_tokens = float(lengths.sum())
        row = {
            "reward_mean": float(r.total.mean()),
            "reward_std": float(r.total.std()) if r.total.numel() > 1 else 0.0,
            **{f"reward_{name}": float(v.float().nanmean()) for name, v in r.terms.items()},  # None: no opinion
            "format_rate": float(r.strict.mean()),
            "accuracy": float(r.correct.mean()) if r.correct is not None else float("nan"),
            "advantage_std": float(ep.advantages.std()) if ep.advantages.numel() > 1 else 0.0,
            # the share of groups whose reward had no spread: those that --saturated-reward ranks
            "saturated_groups": float(r.saturated.float().mean()) if r.saturated is not None else float("nan"),
            **acc,
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "completion_len_mean": float(lengths.mean()),
            "completion_len_max": float(lengths.max()),
            "seconds_generation": t_gen,
            "seconds_scoring": t_score,
            "seconds_update": t_update,
            "gen_tokens_per_s": gen_tokens / t_gen if t_gen > 0 else float("nan"),
            "skipped": float(skipped),
            "rows_too_long": float(ep.redrawn),  # drawn rows that cannot fit the context, redrawn (context.Rows)
            "nonfinite_total": float(self.nonfinite_total),
        }
        g = ep.group_size
        row.update({f"answers_{k}": float(v) for k, v in group_answer_stats(r.answers, g).items()})
        labels = [normalize_answer(lab, numeric=self.cfg.numeric_answers) if lab is not None else None
                  for lab in ep.labels[::g]]
        votes = majority_vote(r.answers, g)
        row["majority_accuracy"] = (sum(v is not None and v == lab for v, lab in zip(votes, labels)) / len(labels)
                                    if any(lab is not None for lab in labels) else float("nan"))
        row = dist_utils.mean_over_ranks(row)
        return {"step": self.step_no, **row}


class MetricMean:
    """The mean of each metric over the micro-steps that logged it (``--sami-prompts`` leaves some micro-steps
    without a critic, so a key's count can be smaller than the number of micro-steps)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self) -> dict[str, float]:
        return {key: value / self.counts[key] for key, value in self.sums.items()}


# -- reliability: which term went non-finite (named in the abort message) ----------------------------------------
FLOAT32_MAX = 3.4028234663852886e38


def nonfinite_cause(cfg, metrics: dict, grad_norm: float) -> str:
    """The first term of the objective that is non-finite, weight included (a finite OT divergence times
    --lambda-ot 1e308 is infinite), with the option to change; else the gradient."""
    terms = (("the GRPO term", "loss_grpo", 1.0, None),
             ("the SAMI term", "loss_sami", cfg.lambda_sami if cfg.use_sami else 0.0, "--lambda-sami"),
             ("the OT term", "ot_divergence", cfg.lambda_ot if cfg.use_ot else 0.0, "--lambda-ot"))
    for name, key, weight, flag in terms:
        value = metrics.get(key)
        if value is None or weight == 0:
            continue
        if not math.isfinite(value):
            return (f"{name} ({key}) was {value}, so the weights or log-probabilities went non-finite; lower --lr "
                    "or check the model's dtype")
        if flag is not None and not abs(value * weight) <= FLOAT32_MAX:  # the loss is float32 (or bf16) at most
            return f"{name} was {flag} {weight:g} × {key} {value:.3g}; lower {flag}"
    return f"the gradient norm was {grad_norm}; lower --lr or --max-grad-norm, or check the model's dtype"


def adamw(params: list[torch.nn.Parameter], **kwargs) -> torch.optim.AdamW:
    """AdamW, fused where torch supports it (CPU and CUDA floating-point parameters): one kernel per step and no
    per-parameter temporaries (TRL's default optimizer is the fused one too)."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # e.g. a device or dtype without a fused kernel
        return torch.optim.AdamW(params, **kwargs)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability of ``model`` to 0 (the modules' and attention's); returns how many were > 0.

    HF attention reads its probability from a float attribute (``attention_dropout``, Llama and most decoders) or
    from a ``Dropout`` module (GPT-2's ``attn_dropout``), and applies it only in training mode; both are covered.
    The model's config is left as it is, so a saved checkpoint keeps its own dropout settings.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            changed += module.p > 0
            module.p = 0.0
        value = getattr(module, "attention_dropout", None)
        if isinstance(value, float):
            changed += value > 0
            module.attention_dropout = 0.0
    return changed


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing of every decoder layer, non-reentrant (no input needs requires_grad,
    so it also works with LoRA and frozen embeddings). Active only in training mode with grad enabled, so the
    sampler and the no-grad scoring passes are unaffected."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def reference_dtype(name: str, run_dtype: torch.dtype) -> torch.dtype:
    """``--ref-dtype``: auto is the run's dtype."""
    return run_dtype if name == "auto" else getattr(torch, name)


def frozen_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen eval-mode copy of ``model`` (the reference π_ref) with its parameters in ``dtype``.

    Each parameter is copied straight into ``dtype`` (no full-precision copy first, which would cost the model's
    size again in freed memory the allocator keeps); tied parameters stay tied; buffers (e.g. rotary
    frequencies) keep their dtype.
    """
    memo: dict[int, torch.nn.Parameter] = {}
    for param in model.parameters():
        if id(param) not in memo:
            memo[id(param)] = torch.nn.Parameter(param.detach().to(dtype, copy=True), requires_grad=False)
    return copy.deepcopy(model, memo).eval()
