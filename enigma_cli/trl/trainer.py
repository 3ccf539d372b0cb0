"""`EnigmaGRPOTrainer`: TRL's `GRPOTrainer` with the ENIGMA objective (docs/method.md §2-5).

How the grouping maps onto TRL
------------------------------
A TRL *prompt* is one (question, principle) pair, with TRL's ``num_generations`` = M = G/K completions; the
principle goes in the system message (`prompts.render_prompt`). `data.PrincipleGroupSampler` (in place of TRL's
`RepeatSampler`) hands out K such prompts of one question at a time, so every generation batch, and every
micro-batch TRL cuts from it, holds whole questions: question p, principle slot j, sample s at row (p·K + j)·M + s,
`enigma train`'s layout. `_prepare_inputs` shuffles whole questions, not rows (TRL shuffles rows).

Where the loss differs from TRL's, and where it matches `enigma train`
----------------------------------------------------------------------
- **Advantages.** TRL normalises over each TRL prompt's M completions, i.e. per principle. With
  ``advantage_grouping="question"`` (the default) they are recomputed over the question's G = K·M completions with
  `core.grpo_advantages`, exactly as `enigma train` does (TRL's per-prompt ones: ``"principle"``).
- **GRPO term.** TRL's own `_compute_loss` (its fused LM head, its loss types, clipping, KL with β > 0, vLLM
  importance correction): not re-implemented.
- **SAMI and OT terms.** Composed by `enigma train`'s own `train.objective.enigma_objective`, with TRL's GRPO loss
  as its policy term: `enigma_terms` only fills its inputs from TRL's batch. The critic's diagonal entries and the
  policy's hidden states come from TRL's training forward (hooked, see `batch.capture_hidden`), the off-diagonal
  entries from `train.objective.score_off_diagonal`, the reference's pooled hidden states from one reference pass
  per generation. Both terms are divided by the gradient-accumulation steps like TRL's loss. TRL left-pads prompts
  where `enigma train` right-pads; the values agree to float rounding (tests/test_trl_trainer.py).
- **Reference.** The frozen starting model: TRL's ``ref_model`` when β > 0, the base model with the adapter switched
  off under PEFT, else a frozen copy of the model passed in (``ref_dtype``).
- **Metrics** go through TRL's logging (``self._metrics``, so ``report_to`` sees them) under `enigma train`'s
  names: ``loss_grpo``, ``loss_sami``, ``mi_sym``, ``mi_row``, ``si``, ``sami_mi_sym``, ``sami_mi_row``,
  ``sami_acc_row``, ``ot_divergence``, ``ot_unconverged``, ``kl_ref``, ``format_rate``, ``accuracy``,
  ``advantage_std``.

Not supported (a clear error): evaluation datasets, streaming datasets, tools/environments, multimodal prompts,
``mask_truncated_completions``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import torch
from accelerate.utils import gather_object, is_peft_model
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import (
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    get_config_model_id,
    split_tensor_dict,
    use_adapter,
)

from ..core import grpo_advantages
from ..core.saturated import saturated_groups
from ..models.hidden import num_layers, resolve_layers
from ..models.logprobs import mean_pool
from ..models.rollout import encode_prompts
from ..principles import load_principle_set
from ..prompts import render_prompt
from ..train.memory import release_during_backward, release_freed_memory
from ..train.objective import (
    PolicyOutputs,
    ReferenceOutputs,
    enigma_objective,
    plan_critic,
    score_off_diagonal,
)
from ..train.params import GrpoParams, ObjectiveParams, OtParams, SamiParams
from ..train.records import append_text
from ..train.rewards import SATURATED_TERM, compute_rewards
from ..train.trainer import default_layers, frozen_copy, reference_dtype
from .batch import backbone, batch_episodes, capture_hidden, completion_mask_full
from .config import EnigmaGRPOConfig
from .data import PrincipleGroupSampler, check_layout, principle_rows, question_of
from .rewards import enigma_reward_funcs

ENIGMA_KEYS = ("enigma_question", "enigma_principle_index", "enigma_ref_pooled", "enigma_ref_logps")


class EnigmaGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` + SAMI InfoNCE + Sinkhorn OT, principle-conditioned rollouts (see the module docstring).

    Takes `GRPOTrainer`'s arguments; ``args`` must be an `EnigmaGRPOConfig`; ``train_dataset`` holds questions
    (a ``question`` column, or text/chat ``prompt``s) and other columns for the rewards (e.g. ``answer``);
    ``reward_funcs`` defaults to ENIGMA's format-only reward. ``principle_set`` (a `principles.PrincipleSet`)
    overrides ``args.principles``.
    """

    def __init__(self, model, reward_funcs=None, args: EnigmaGRPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, peft_config=None, principle_set=None, **kwargs):
        args = args if args is not None else EnigmaGRPOConfig(output_dir="enigma-grpo")
        if not isinstance(args, EnigmaGRPOConfig):
            raise TypeError("EnigmaGRPOTrainer needs an EnigmaGRPOConfig (TRL's GRPOConfig plus the ENIGMA fields).")
        if eval_dataset is not None:
            raise ValueError("EnigmaGRPOTrainer does not evaluate during training yet; evaluate the checkpoints "
                             "with `enigma evaluate`.")
        if train_dataset is None:
            raise ValueError("EnigmaGRPOTrainer needs a train_dataset of questions.")
        if kwargs.get("tools") or kwargs.get("environment_factory") or kwargs.get("rollout_func"):
            raise ValueError("EnigmaGRPOTrainer does not support tools, environments or a rollout_func.")
        texts, ids = _principles(args, principle_set)
        if args.principles_per_prompt > len(texts):
            raise ValueError(f"principles_per_prompt ({args.principles_per_prompt}) exceeds the {len(texts)} "
                             "principles given.")
        if reward_funcs is None:
            reward_funcs, weights = enigma_reward_funcs("format", args.group_size)
            args.reward_weights = args.reward_weights or weights
        is_peft = peft_config is not None or is_peft_model(model)
        reference = None
        if args.needs_reference and args.beta == 0 and not is_peft and not isinstance(model, str):
            reference = _frozen_copy(model, args.ref_dtype)  # before TRL patches the model's forward
        self.enigma_principles = (texts, ids)
        super().__init__(model, reward_funcs, args, principle_rows(train_dataset, len(texts)), None,
                         processing_class, peft_config=peft_config, **kwargs)
        if args.needs_reference and reference is None and self.ref_model is None and not is_peft_model(self.model):
            reference = create_model_from_path(get_config_model_id(self.model.config), dtype=self.model.dtype)
        if reference is not None:
            reference.requires_grad_(False)
            if args.disable_dropout:
                disable_dropout_in_model(reference)
            add_fused_lm_head(reference, temperature=self.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
            reference = self._prepare_reference(reference)
        self.enigma_reference = reference
        # CPU runs: freed heap back to the OS inside the backward, as after each generation (train.memory;
        # bench/peak_memory.py's trl-gc-release case measures both on plain TRL)
        release_during_backward(list(self.model.parameters()))
        self.enigma_layers = _layers(args.ot_layers, self.accelerator.unwrap_model(self.model))
        self._enigma_capture = None
        self._enigma_batch: dict = {}

    # -- data ------------------------------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        rows = dataset if dataset is not None else self.train_dataset
        args, n_principles = self.args, len(self.enigma_principles[0])
        return PrincipleGroupSampler(len(rows) // n_principles, n_principles, args.principles_per_prompt,
                                     self.num_generations, args.generation_batch_size // args.group_size,
                                     repeat_count=self.num_iterations * args.steps_per_generation,
                                     shuffle=self.shuffle_dataset, seed=args.seed)

    def _tokenize_prompts(self, prompts: list):
        if prompts and isinstance(prompts[0], str):  # ours: rendered text, encoded as `enigma train` encodes it
            return encode_prompts(self._tokenizer, prompts), None, {}
        return super()._tokenize_prompts(prompts)

    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            return self._generate_and_score_completions(generation_batch)
        every = self.args.steps_per_generation * self.num_iterations
        if self._step % every == 0 or self._buffered_inputs is None:
            batch = _shuffle_questions(self._generate_and_score_completions(generation_batch), self.args.group_size)
            self._buffered_inputs = split_tensor_dict(batch, self.args.steps_per_generation)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # -- generation, rewards, advantages, the reference pass -------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        args, k, m = self.args, self.args.principles_per_prompt, self.num_generations
        check_layout([x["enigma_question"] for x in inputs], [x["enigma_principle_index"] for x in inputs], k, m)
        texts, ids = self.enigma_principles
        inputs = [{**x, "question": question_of(x, args.question_column)} for x in inputs]
        inputs = [{**x, "enigma_principle": texts[x["enigma_principle_index"]],
                   "enigma_principle_id": ids[x["enigma_principle_index"]],
                   "prompt": render_prompt(self._tokenizer, texts[x["enigma_principle_index"]], x["question"])}
                  for x in inputs]
        out = super()._generate_and_score_completions(inputs)
        device = out["advantages"].device
        out["enigma_question"] = torch.tensor([x["enigma_question"] for x in inputs], device=device)
        out["enigma_principle_index"] = torch.tensor([x["enigma_principle_index"] for x in inputs], device=device)
        advantages = self._question_advantages()
        if advantages is not None:
            out["advantages"] = advantages[self._process_slice(len(inputs))].to(device)
        mode = "train" if self.model.training else "eval"
        adv_all = advantages if advantages is not None else gather_object(out["advantages"].tolist())
        self._metrics[mode]["advantage_std"].append(float(torch.as_tensor(adv_all).float().std()))
        if args.needs_reference:
            out.update(self._reference_pass(out))
        if args.completions_jsonl:
            self._dump_completions(inputs, out)
        release_freed_memory()  # the sampler's and the scoring passes' transient buffers, as the native loop does
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        labels = [x.get("answer") for x in inputs]
        seen = compute_rewards(texts, labels, self.args.group_size, "format")  # the layout and the answers
        self._log_metric("format_rate", float(seen.strict.mean()))
        if seen.correct is not None:
            self._log_metric("accuracy", float(seen.correct.mean()))
        self._log_metric("saturated_groups", self._saturated_share(rewards))
        self._enigma_batch = {"rewards_per_func": rewards, "texts": texts, "answers": seen.answers}
        return rewards

    def _saturated_share(self, per_func: torch.Tensor) -> float:
        """Share of questions whose reward, the ``saturated`` fallback left out, has no spread (as `enigma train`
        logs it)."""
        own = torch.tensor([name != SATURATED_TERM for name in self.reward_func_names], dtype=torch.float32)
        weights = self.reward_weights.float().cpu() * own
        total = (per_func.float().cpu() * weights.unsqueeze(0)).nansum(dim=1)
        return float(saturated_groups(total, self.args.group_size).float().mean())

    def _question_advantages(self) -> torch.Tensor | None:
        """All processes' advantages, normalised over each question's G completions (None: TRL's are kept)."""
        if self.args.advantage_grouping != "question":
            return None
        per_func = self._enigma_batch["rewards_per_func"]
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        advantages = grpo_advantages(rewards.float().cpu(), self.args.group_size, scale=self.scale_rewards)
        logged = self._logs["advantages"]
        for _ in range(min(len(advantages), len(logged))):  # the completions table shows the advantages used
            logged.pop()
        logged.extend(advantages.tolist())
        return advantages

    def _process_slice(self, n_local: int) -> slice:
        index = self.accelerator.process_index
        return slice(index * n_local, (index + 1) * n_local)

    @torch.no_grad()
    def _reference_pass(self, out: dict) -> dict:
        """π_ref's pooled hidden states per completion (and its log-probs, for the KL metric when β = 0)."""
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        with self._reference() as ref, capture_hidden(self._backbone(ref), self.enigma_layers) as cap:
            ref_logps, _, _ = self._get_per_token_logps_and_entropies(
                ref, ids, mask, out["completion_ids"].size(1), batch_size=self.args.per_device_train_batch_size)
        full = completion_mask_full(out)
        pooled = torch.stack([mean_pool(h.float(), full) for h in cap.hidden().values()], dim=1)
        extra = {"enigma_ref_pooled": pooled}
        if "ref_per_token_logps" not in out:
            extra["enigma_ref_logps"] = ref_logps
        return extra

    @contextmanager
    def _reference(self):
        if self.enigma_reference is not None:
            yield self.enigma_reference
        elif self.ref_model is not None:
            yield self.ref_model
        else:  # PEFT: the base model, adapter off (a copy of a pre-trained adapter when TRL made one, β > 0)
            inner = self.accelerator.unwrap_model(self.model)
            with use_adapter(inner, adapter_name="ref" if "ref" in inner.peft_config else None):
                yield self.model

    def _backbone(self, model):
        return backbone(model, self.accelerator.unwrap_model)

    def _prepare_reference(self, reference):
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(reference, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(reference, self.accelerator)
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    # -- the loss --------------------------------------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if self._enigma_capture is not None:
            self._enigma_capture["logps"] = result[0]
        return result

    def _compute_loss(self, model, inputs):
        args = self.args
        mode = "train" if self.model.training else "eval"
        check_layout(inputs["enigma_question"].tolist(), inputs["enigma_principle_index"].tolist(),
                     args.principles_per_prompt, self.num_generations)
        layers = self.enigma_layers if "enigma_ref_pooled" in inputs else []
        self._enigma_capture = {}
        try:
            with capture_hidden(self._backbone(model), layers) as cap:
                loss = super()._compute_loss(model, inputs)
            logps = self._enigma_capture["logps"]
        finally:
            self._enigma_capture = None
        accum = self.current_gradient_accumulation_steps if mode == "train" else 1
        total, metrics = self.enigma_terms(model, inputs, logps, cap.hidden(), accum, loss)
        self._log_enigma(mode, metrics)
        return total

    def enigma_terms(self, model, inputs: dict, logps: torch.Tensor, hidden: dict[int, torch.Tensor],
                     accum: int = 1, grpo_loss: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """TRL's GRPO loss ``grpo_loss`` (0 if None) + λ_SAMI·L_SAMI + λ_OT·S_ε of a micro-batch (its share under
        ``accum`` micro-batches) and their metrics: TRL's batch as `train.objective.enigma_objective`'s inputs.

        ``logps`` [B, C] are the policy's completion-token log-probs from TRL's forward (with graph), ``hidden`` its
        hidden states [B, P+C, H] per OT layer. The micro-batch is micro-step ``_step % accum`` of its optimizer step
        (TRL counts ``_step`` after each micro-step), so ``--sami-prompts`` keeps the critic of the step's first
        prompts, as `enigma train` does.
        """
        params = objective_params(self.args, self.temperature)
        mask = inputs["completion_mask"]
        ep = batch_episodes(inputs, self.args.principles_per_prompt, self.num_generations)
        micro = self._step % accum
        critic = plan_critic(ep, range(ep.n_prompts), params.sami, ep.n_prompts * accum, micro * ep.n_prompts)
        off_logp = None
        if critic is not None and critic.pairs:
            off_logp = score_off_diagonal(model, ep, critic.pairs, self.temperature, graph=params.sami.on,
                                          bare=self.accelerator.unwrap_model(model))
        seq = (logps * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = {}
        if "enigma_ref_pooled" in inputs:
            full = completion_mask_full(inputs)
            pooled = {layer: mean_pool(h.float(), full) for layer, h in hidden.items()}
        policy = PolicyOutputs(logps, mask, seq, pooled, off_logp)
        ref_pooled = ({layer: inputs["enigma_ref_pooled"][:, n] for n, layer in enumerate(self.enigma_layers)}
                      if "enigma_ref_pooled" in inputs else None)
        reference = ReferenceOutputs(inputs.get("ref_per_token_logps", inputs.get("enigma_ref_logps")), ref_pooled)
        loss = grpo_loss if grpo_loss is not None else logps.new_zeros(())
        return enigma_objective(ep, critic, policy, reference, (loss, {"loss_grpo": float(loss.detach()) * accum}),
                                params, accum)

    def _log_enigma(self, mode: str, metrics: dict[str, float]) -> None:
        """Each metric's mean over processes, into TRL's ``self._metrics`` (the same keys on every rank)."""
        keys = sorted(metrics)
        local = torch.tensor([[float(metrics[key]) for key in keys]], device=self.accelerator.device)
        means = self.accelerator.gather(local).float().mean(dim=0).tolist()
        for key, value in zip(keys, means):
            self._metrics[mode][key].append(value)

    # -- completions ------------------------------------------------------------------------------------------------
    def _dump_completions(self, inputs: list[dict], out: dict) -> None:
        """Append this generation's completions, every process's, to ``output_dir/completions.jsonl``."""
        per_func = self._enigma_batch["rewards_per_func"][self._process_slice(len(inputs))]
        reward = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1).tolist()
        step, rank, g = self.state.global_step + 1, self.accelerator.process_index, self.args.group_size
        records = [{"step": step, "rank": rank, "prompt": i // g, "question": x["question"],
                    "principle": x["enigma_principle_id"], "completion": text, "answer": answer,
                    "label": x.get("answer"), "reward": round(r, 6), "advantage": round(a, 6)}
                   for i, (x, text, answer, r, a) in enumerate(zip(inputs, self._enigma_batch["texts"],
                                                                   self._enigma_batch["answers"], reward,
                                                                   out["advantages"].tolist()))]
        gathered = gather_object(records)
        if self.accelerator.is_main_process:
            os.makedirs(self.args.output_dir, exist_ok=True)
            append_text(os.path.join(self.args.output_dir, "completions.jsonl"),
                        "".join(json.dumps(r) + "\n" for r in gathered))


def _shuffle_questions(batch: dict, group_size: int) -> dict:
    """TRL's row shuffle, by whole questions (blocks of G rows), so that every micro-batch keeps the layout."""
    n = len(batch["advantages"])
    order = torch.randperm(n // group_size)
    rows = (order.unsqueeze(1) * group_size + torch.arange(group_size)).reshape(-1)

    def permute(value):
        if isinstance(value, torch.Tensor) and value.ndim >= 1:
            return value[rows.to(value.device)]
        if isinstance(value, list):
            return [value[i] for i in rows.tolist()]
        return value

    return {key: permute(value) for key, value in batch.items()}


def _principles(args: EnigmaGRPOConfig, principle_set=None) -> tuple[list[str], list[str]]:
    if principle_set is not None:
        return list(principle_set.texts), list(principle_set.ids)
    if args.principle_texts:
        return list(args.principle_texts), [f"p{i}" for i in range(len(args.principle_texts))]
    pset = load_principle_set(args.principles)
    return list(pset.texts), list(pset.ids)


def objective_params(args: EnigmaGRPOConfig, temperature: float) -> ObjectiveParams:
    """The ENIGMA terms' parameters from an `EnigmaGRPOConfig` (the GRPO term is TRL's own, so its parameters are
    TRL's and only the defaults stand here)."""
    sami = SamiParams(weight=args.lambda_sami, matrices=args.sami_matrices, prompts=args.sami_prompts,
                      log_critic=args.critic_metrics)
    return ObjectiveParams(GrpoParams(), sami, OtParams(weight=args.lambda_ot, eps=args.ot_eps), temperature)


def _frozen_copy(model, ref_dtype: str):
    return frozen_copy(model, reference_dtype(ref_dtype, model.dtype))


def _layers(ot_layers, model) -> list[int]:
    if is_peft_model(model):
        model = model.get_base_model()
    n = num_layers(model)
    return list(resolve_layers(n, ot_layers or (), what="ot_layers").values()) or default_layers(n)
