"""Pre-training enigma-tiny on the synthetic tasks, and measuring what it learnt.

`pretrain` is plain supervised fine-tuning: each example is rendered with `enigma_cli.prompts.render_prompt`
(principle in the system message, question as the user turn), followed by the completion and EOS; the loss is the
mean cross-entropy over completion tokens only (prompt and padding are masked), optimised with AdamW, linear
warm-up then cosine decay, gradient clipping at 1. It is deterministic for a given seed on a given machine and
thread count: the data order comes from a seeded `torch.Generator` and the model has no dropout.

`evaluate_default_model` measures, on held-out problems under the shipped principles, with sampling at T = 1
(what GRPO and score-principles see) and greedy decoding:

- format rate: the strict layout of method.md §1 (`enigma_cli.core.format_rewards.parse_completion`);
- answer accuracy: normalised answer equals the reference;
- principle distinguishability: accuracy of recovering the style the prompt's principle asks for from the
  generated reasoning alone, with the synthetic module's rule-based `detect_style`, against chance 1/#styles
  (principles that share a style, such as the placebos, cannot be told apart by construction).

`noisy_training_examples` makes the model imperfect on purpose: a seeded fraction of the training completions
breaks the format, and another is written in a different style than its principle asks for. Undertraining
alone is a poor knob (the format goes from ~0% to ~100% strict within a hundred steps); with the noise the
model's sampled format rate and principle adherence settle near (1 − noise) × what it learnt, while its
greedy output stays well formed. That leaves room for the format reward (GRPO) and the principle term (SAMI).

`build_tiny_model` chains data, tokenizer, initialisation, `pretrain` and `evaluate_default_model`;
`save_model_dir` writes the folder atomically. `enigma build-default-model` is the command line over them.

Choices (ours): the prompt and the completion are tokenised separately and concatenated, which is exactly what
generation conditions on; the warm-up is 5% of the steps and the cosine decays to 10% of the peak; examples
longer than ``max_length`` tokens are cut (the synthetic tasks fit in ~160 tokens); evaluation pairs held-out
problem i with principle i mod P (principles sorted by id), so every principle is measured equally often.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..core.format_rewards import normalize_answer, parse_completion
from ..models.tiny import init_tiny_lm, param_count, train_tokenizer
from ..principles import shipped_sets
from ..prompts import render_prompt, system_message
from ..tasks import synthetic

LogFn = Callable[[int, dict], None]


FORMAT_DEFECTS = ("no-open-tag", "answer-outside-tags", "text-after-answer", "no-close-tag", "no-newlines")


def corrupt_format(completion: str, defect: str) -> str:
    """``completion`` (strict layout) with one format defect, so that it fails the strict gate of method.md §1.

    Defects: ``no-open-tag`` (drops ``<reasoning>``), ``answer-outside-tags`` (the answer as a sentence after
    ``</reasoning>``), ``text-after-answer`` (a sentence after ``</answer>``), ``no-close-tag`` (drops
    ``</answer>``), ``no-newlines`` (tags and bodies on one line: soft format only).
    """
    parsed = parse_completion(completion)
    reasoning, answer = parsed.reasoning or "", parsed.answer or ""
    if defect == "no-open-tag":
        return f"{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"
    if defect == "answer-outside-tags":
        return f"<reasoning>\n{reasoning}\n</reasoning>\nThe answer is {answer}."
    if defect == "text-after-answer":
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\nThe answer is {answer}."
    if defect == "no-close-tag":
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}"
    if defect == "no-newlines":
        return f"<reasoning>{' '.join(reasoning.splitlines())}</reasoning><answer>{answer}</answer>"
    raise ValueError(f"unknown format defect {defect!r} (known: {', '.join(FORMAT_DEFECTS)})")


def noisy_training_examples(n: int, seed: int, *, format_noise: float = 0.0, style_noise: float = 0.0,
                            sets=None) -> list[dict]:
    """`synthetic.training_examples` with a seeded fraction of imperfect rows, so the model is imperfect too.

    With probability ``style_noise`` a row's reasoning is written in a uniformly drawn *other* style than its
    principle asks for; independently, with probability ``format_noise`` its completion gets one of
    `FORMAT_DEFECTS`. A model fit to these rows breaks the format and ignores its principle at about those rates
    when sampling at T = 1 while its greedy output stays well formed: room for the format reward and the
    principle term to improve it, whatever the number of steps. Rows gain the keys ``style`` (the style written)
    and ``format_defect`` (None or the defect).
    """
    for name, value in (("format_noise", format_noise), ("style_noise", style_noise)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], not {value}")
    rows = synthetic.training_examples(n, seed, sets=sets)
    problems = synthetic.generate_problems(n, seed)
    rng = random.Random(f"enigma-tiny-noise-{seed}")
    for row, problem in zip(rows, problems):
        style = synthetic.style_of(row["principle_id"])
        if rng.random() < style_noise:
            if problem.question != row["question"]:  # training_examples no longer follows generate_problems
                raise RuntimeError("synthetic.training_examples and generate_problems disagree; cannot add noise")
            style = rng.choice([s for s in synthetic.STYLES if s != style])
            row["completion"] = synthetic.format_completion(synthetic.reasoning_text(problem, style),
                                                            problem.answer)
        row["style"] = style
        row["format_defect"] = rng.choice(FORMAT_DEFECTS) if rng.random() < format_noise else None
        if row["format_defect"]:
            row["completion"] = corrupt_format(row["completion"], row["format_defect"])
    return rows


def encode_example(tokenizer, principle_text: str | None, question: str, completion: str,
                   max_length: int = 256) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS, and the number of prompt tokens (masked from the loss)."""
    prompt_ids = tokenizer(render_prompt(tokenizer, principle_text, question), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    return ids, len(prompt_ids)


def collate(encoded: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels -100 on the prompt and the padding."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(encoded):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = t
        attention_mask[row, : len(ids)] = 1
        labels[row, n_prompt: len(ids)] = t[n_prompt:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens of a batch (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=-100)


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain(model, tokenizer, examples: Sequence[dict], *, steps: int, batch_size: int = 32, lr: float = 3e-3,
             seed: int = 0, weight_decay: float = 0.01, max_length: int = 256, log: LogFn | None = None,
             log_every: int = 25) -> dict:
    """Train ``model`` in place on ``examples`` (dicts with principle_text, question, completion).

    Returns a dict of metrics: steps, examples, epochs, tokens (completion tokens trained on), first_loss,
    final_loss (mean of the last 10 steps), seconds. ``log(step, metrics)`` is called every ``log_every`` steps.
    """
    if not examples:
        raise ValueError("pretrain needs at least one example")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    torch.manual_seed(seed)
    encoded = [encode_example(tokenizer, ex.get("principle_text"), ex["question"], ex["completion"], max_length)
               for ex in examples]
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, warmup))
    model.train()
    order, cursor, losses, tokens = torch.randperm(len(encoded), generator=gen).tolist(), 0, [], 0
    start = time.perf_counter()
    for step in range(steps):
        idx = []
        while len(idx) < batch_size:
            if cursor == len(order):
                order, cursor = torch.randperm(len(encoded), generator=gen).tolist(), 0
            take = order[cursor: cursor + batch_size - len(idx)]
            idx += take
            cursor += len(take)
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id)
        loss = completion_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        tokens += int((batch["labels"][:, 1:] != -100).sum())
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log(step, {"loss": losses[-1], "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "seconds": time.perf_counter() - start})
    model.eval()
    return {
        "steps": steps,
        "examples": len(encoded),
        "epochs": steps * batch_size / len(encoded),
        "tokens": tokens,
        "first_loss": losses[0],
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def generate_completions(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128,
                         temperature: float = 1.0, batch_size: int = 64, seed: int = 0) -> list[str]:
    """Decoded completions (prompt excluded, special tokens dropped); temperature 0 is greedy."""
    torch.manual_seed(seed)
    out: list[str] = []
    pad_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i: i + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False)
            kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
                else {"do_sample": False}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **kwargs)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = pad_side
    return out


def _score(completions: Sequence[str], answers: Sequence[str], styles: Sequence[str],
           classify: Callable[[str], str | None]) -> dict:
    n = len(completions)
    strict = soft = correct = style_hits = 0
    for text, ref, style in zip(completions, answers, styles):
        parsed = parse_completion(text)
        strict += parsed.strict
        soft += parsed.soft
        correct += parsed.answer is not None and normalize_answer(parsed.answer) == normalize_answer(str(ref))
        style_hits += parsed.reasoning is not None and classify(parsed.reasoning) == style
    return {
        "format_rate": strict / n,
        "soft_format_rate": soft / n,
        "accuracy": correct / n,
        "distinguishability": style_hits / n,
    }


def evaluate_default_model(model, tokenizer, n: int = 256, seed: int = 12345, *, max_new_tokens: int = 128,
                           batch_size: int = 64, sets=None) -> dict:
    """Format rate, answer accuracy and principle distinguishability on ``n`` held-out synthetic prompts.

    Prompt i pairs held-out problem i (`synthetic.generate_problems(..., split="heldout")`, never trained on)
    with distinct principle id i mod P of the shipped sets (``sets`` to override); the style it asks for is
    `synthetic.style_of(id)`, and `synthetic.detect_style` reads the style of the generated reasoning.
    Keys: ``{sampled,greedy}_{format_rate,soft_format_rate,accuracy,distinguishability}``, ``styles`` and
    ``chance_distinguishability`` (1 / number of styles), ``n``.
    """
    pool: dict[str, str] = {}
    for ps in sets if sets is not None else shipped_sets():
        for p in ps.principles:
            pool.setdefault(p.id, p.text)
    ids = sorted(pool)
    problems = synthetic.generate_problems(n, seed, split="heldout")
    chosen = [ids[i % len(ids)] for i in range(n)]
    prompts = [render_prompt(tokenizer, pool[pid], q.question) for pid, q in zip(chosen, problems)]
    answers = [q.answer for q in problems]
    styles = [synthetic.style_of(pid) for pid in chosen]
    classify = synthetic.detect_style
    result: dict = {"n": n}
    for label, temperature in (("sampled", 1.0), ("greedy", 0.0)):
        texts = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     temperature=temperature, batch_size=batch_size, seed=seed)
        for key, value in _score(texts, answers, styles, classify).items():
            result[f"{label}_{key}"] = value
    result["styles"] = len(set(styles))
    result["chance_distinguishability"] = 1 / len(set(styles))
    return result


# ------------------------------------------------------------------------------------------------ the build


def tokenizer_corpus(examples: Sequence[dict]) -> list[str]:
    """Texts the tokenizer is trained on: each example's system message, question and completion."""
    return [f"{system_message(ex.get('principle_text'))}\n{ex['question']}\n{ex['completion']}" for ex in examples]


def build_tiny_model(*, examples: int, steps: int, batch_size: int, lr: float, seed: int, vocab_size: int,
                     hidden_size: int, layers: int, heads: int, intermediate_size: int, format_noise: float,
                     style_noise: float, eval_prompts: int, eval_seed: int | None = None,
                     log: LogFn | None = None) -> tuple:
    """Data, tokenizer, model, pre-training and evaluation of enigma-tiny; returns (model, tokenizer, info).

    ``info`` (JSON-safe) holds the settings, the data size, the training metrics, the parameter count and, when
    ``eval_prompts`` > 0, the measured metrics of `evaluate_default_model` on held-out problems.
    """
    start = time.perf_counter()
    rows = noisy_training_examples(examples, seed, format_noise=format_noise, style_noise=style_noise)
    tokenizer = train_tokenizer(tokenizer_corpus(rows), vocab_size=vocab_size)
    model = init_tiny_lm(tokenizer, seed, hidden_size=hidden_size, num_layers=layers, num_heads=heads,
                         intermediate_size=intermediate_size)
    lengths = [len(encode_example(tokenizer, r["principle_text"], r["question"], r["completion"])[0])
               for r in rows[:1000]]
    train = pretrain(model, tokenizer, rows, steps=steps, batch_size=batch_size, lr=lr, seed=seed, log=log)
    info: dict = {
        "name": "enigma-tiny",
        "architecture": "LlamaForCausalLM",
        "parameters": param_count(model),
        "vocab_size": len(tokenizer),
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "examples": len(rows),
        "format_noise": format_noise,
        "style_noise": style_noise,
        "noisy_format_rows": sum(r["format_defect"] is not None for r in rows),
        "off_style_rows": sum(r["style"] != _target_style(r["principle_id"]) for r in rows),
        "mean_tokens_per_example": sum(lengths) / len(lengths),
        "max_tokens_per_example": max(lengths),
        "train": train,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if eval_prompts > 0:
        metrics = evaluate_default_model(model, tokenizer, n=eval_prompts,
                                         seed=seed + 1 if eval_seed is None else eval_seed)
        info["eval"] = metrics
    info["seconds"] = time.perf_counter() - start
    return model, tokenizer, info


def _target_style(principle_id: str) -> str:
    return synthetic.style_of(principle_id)


def save_model_dir(model, tokenizer, out, extra_files: dict[str, str] | None = None) -> None:
    """Write a `save_pretrained` folder (safetensors + tokenizer + ``extra_files``) atomically.

    Everything is written to a temporary folder beside ``out`` and renamed into place; an existing ``out`` is
    replaced only once the new folder is complete, so a failure never leaves a half-written model.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the model folder is package data, readable by all
    old = None
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_config(tmp / "tokenizer_config.json")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for path in tmp.iterdir():  # some writers create private files; package data must be readable by all
            os.chmod(path, 0o666 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / out.name).exists() and not out.exists():
            os.replace(old / out.name, out)  # put the previous model back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _portable_tokenizer_config(path) -> None:
    """Name the tokenizer class as transformers 4.x knows it (5.x reads both), keeping the special tokens."""
    if not path.exists():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") != "TokenizersBackend":
        return
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
