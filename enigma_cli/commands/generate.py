"""`enigma generate`: sample formatted completions from a model under a principle (a quick look at a model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from ..errors import InputError
from ..report import check_format, write_table


def generate(
    question: Annotated[list[str], typer.Argument(help="Question(s) to answer.")],
    model: Annotated[str, typer.Option(help="enigma-tiny, smollm2, a local model folder or a hub id.")] = "enigma-tiny",
    principle: Annotated[str | None, typer.Option(help="A principle: its text, or SET:ID of a shipped set "
                                                          "(e.g. stepwise-vs-oneline:show-steps).")] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", help="Completions per question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion, in tokens.")] = 96,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Write the completions here instead of stdout.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or parquet.")] = "jsonl",
) -> None:
    """Generate completions in the <reasoning>/<answer> format, one row per completion."""
    check_format(fmt, out)
    if samples < 1 or max_new_tokens < 1:
        raise InputError("--samples and --max-new-tokens must be at least 1.")
    if temperature < 0:
        raise InputError(f"--temperature must be >= 0, not {temperature}.")
    text = _principle_text(principle)
    from ..core import parse_completion
    from ..models.loading import load_model
    from ..models.rollout import generate as sample
    from ..prompts import render_prompt

    lm = load_model(model, device=device, dtype=dtype)
    prompts = [render_prompt(lm.tokenizer, text, q) for q in question]
    gen = sample(lm.model, lm.tokenizer, prompts, num_samples=samples, max_new_tokens=max_new_tokens,
                 temperature=temperature, seed=seed)
    rows = []
    for i, completion in enumerate(gen.texts):
        parsed = parse_completion(completion)
        rows.append({"question": question[gen.prompt_index[i]], "principle": text or "", "completion": completion,
                     "strict_format": parsed.strict, "answer": parsed.answer, "model": model})
    write_table(pd.DataFrame(rows), out, fmt)


def _principle_text(spec: str | None) -> str | None:
    """`SET:ID` names a shipped principle; anything else is the principle's text itself."""
    if not spec:
        return None
    set_name, sep, pid = spec.partition(":")
    if sep and " " not in set_name:
        from ..principles import load_principle_set

        pset = load_principle_set(set_name)
        for p in pset.principles:
            if p.id == pid:
                return p.text
        raise InputError(f"--principle {spec}: set {pset.name} has no principle {pid!r} "
                         f"(it has {', '.join(pset.ids)}).")
    return spec
