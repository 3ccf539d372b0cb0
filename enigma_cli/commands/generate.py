"""`enigma generate`: sample formatted completions from a model under a principle (a quick look at a model)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..cli_options import command
from ..console import console
from ..context import ContextCheck, Principle
from ..core import parse_completion
from ..errors import InputError
from ..models import loading
from ..models.devices import resolve_device, resolve_dtype
from ..models.rollout import generate as sample
from ..options import Options, device_opt, dtype_opt, opt
from ..principles import load_principle_set
from ..prompts import render_prompt
from ..report import FORMATS, check_format, write_table


@dataclass(frozen=True)
class GenerateConfig(Options):
    question: tuple[str, ...] = opt((), "Question(s) to answer.", argument=True, metavar="QUESTION")
    model: str = opt("enigma-tiny", "enigma-tiny, smollm2, a local model folder, a run folder or a hub id.")
    principle: str | None = opt(None, "A principle: its text, or SET:ID of a shipped set "
                                      "(e.g. stepwise-vs-oneline:show-steps).")
    samples: int = opt(1, "Completions per question.", short="-n", ge=1)
    max_new_tokens: int = opt(96, "Longest completion, in tokens.", ge=1)
    temperature: float = opt(0.0, "Sampling temperature (0 = greedy).", ge=0)
    seed: int = opt(0, "Sampling seed.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    out: str | None = opt(None, "Write the completions here instead of stdout.", metavar="FILE",
                           output="file")
    format: str = opt("jsonl", "Report format.", choices=FORMATS)

    def check(self) -> None:
        if not self.question:
            raise InputError("give at least one QUESTION to answer.")
        if any(not q.strip() for q in self.question):
            raise InputError("a QUESTION is empty.")


def run(cfg: GenerateConfig, dry_run: bool) -> None:
    check_format(cfg.format, cfg.out)
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))  # before --dry-run says the plan is fine
    text = principle_text(cfg.principle)
    check = ContextCheck([Principle("--principle", text)] if text else [], cfg.max_new_tokens)
    check.before_load(cfg.model, cfg.question)  # a question too long for the model is refused, not truncated
    if dry_run:
        console.print(f"{len(cfg.question)} question(s) × {cfg.samples} sample(s) of ≤{cfg.max_new_tokens} tokens "
                      f"from {cfg.model}" + (f" under {cfg.principle!r}" if text else "") + "; nothing loaded "
                      "(--dry-run).", highlight=False)
        return

    lm = loading.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    check.loaded(lm, cfg.question)
    prompts = [render_prompt(lm.tokenizer, text, q) for q in cfg.question]
    gen = sample(lm.model, lm.tokenizer, prompts, num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                 temperature=cfg.temperature, seed=cfg.seed)
    rows = []
    for i, completion in enumerate(gen.texts):
        parsed = parse_completion(completion)
        rows.append({"question": cfg.question[gen.prompt_index[i]], "principle": text or "",
                     "completion": completion, "strict_format": parsed.strict, "answer": parsed.answer,
                     "model": cfg.model})
    write_table(pd.DataFrame(rows), cfg.out, cfg.format)


def principle_text(spec: str | None) -> str | None:
    """`SET:ID` names a shipped principle; anything else is the principle's text itself."""
    if not spec:
        return None
    set_name, sep, pid = spec.partition(":")
    if sep and " " not in set_name:
        pset = load_principle_set(set_name)
        for p in pset.principles:
            if p.id == pid:
                return p.text
        raise InputError(f"--principle {spec}: set {pset.name} has no principle {pid!r} "
                         f"(it has {', '.join(pset.ids)}).")
    return spec


generate = command(GenerateConfig, "generate", run,
                   help="Generate completions in the <reasoning>/<answer> format, one row per completion.")
