"""Doing one unit of a study: score a set with the base model, or train, evaluate and re-score one run."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from .. import score
from ..console import console
from ..evaluate import EvalSettings, evaluate
from ..models import loading
from ..score import ScoreConfig, trust
from ..train.config import TrainConfig
from ..train.run import plan, run
from .config import StudyConfig
from .downstream import downstream_outcomes
from .outcomes import training_outcomes
from .plan import Unit

EVAL_KEYS = ("format_rate", "accuracy_at_1", "majority_accuracy", "accuracy_at_1_flexible",
             "majority_accuracy_flexible")
ABLATION = {"enigma": (True, True), "grpo": (False, False), "grpo+sami": (True, False), "grpo+ot": (False, True)}


class Models:
    """Keeps the last loaded model, so the base is loaded once for all the score units of a process."""

    def __init__(self, cfg: StudyConfig):
        self.cfg, self.spec, self.lm = cfg, None, None

    def get(self, spec: str):
        if spec != self.spec:
            self.release()

            self.lm = loading.load_model(spec, device=self.cfg.device, dtype=self.cfg.dtype)
            self.spec = spec
        return self.lm

    def release(self) -> None:
        """Drop the kept model (training loads its own: two models on the device otherwise)."""
        self.lm, self.spec = None, None
        gc.collect()

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def score_config(cfg: StudyConfig, model: str):
    return ScoreConfig(model=model, prompts=cfg.score_prompts, samples=cfg.score_samples,
                       max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype)


def measure_si(lm, pset, examples, cfg: StudyConfig, model: str) -> dict:
    # readability reaches `trusted`
    checks = trust.check_principles(lm, pset, [ex.prompt_text for ex in examples])
    row = score.score_set(lm, pset, examples, score_config(cfg, model), checks=checks).row
    keep = ("si", "si_low", "si_high", "mi_sym", "acc_row", "format_rate", "trusted", "reason")
    return {k: row[k] for k in keep if k in row}


def evaluate_both(lm, pset, examples, cfg: StudyConfig) -> dict:
    """Accuracy without a principle, and with the set's principles given round-robin over the questions."""
    settings = EvalSettings(samples=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                            seed=cfg.seed)
    plain = evaluate(lm, examples, None, settings)
    k = pset.k
    parts = [(len(examples[j::k]), evaluate(lm, examples[j::k], p.text, settings))
             for j, p in enumerate(pset.principles) if examples[j::k]]
    total = sum(n for n, _ in parts)
    out = {}
    for key in EVAL_KEYS:
        if key in plain:
            out[key] = float(plain[key])
            out[f"{key}_principle"] = sum(n * float(r[key]) for n, r in parts) / total
    return out


def do_score(unit: Unit, cfg: StudyConfig, pset, score_examples, eval_examples, models: Models) -> dict:
    lm = models.get(cfg.model)
    pre = measure_si(lm, pset, score_examples, cfg, cfg.model)
    base = evaluate_both(lm, pset, eval_examples, cfg)
    return {"set": pset.name, "k": pset.k, **{f"pre_{k}": v for k, v in pre.items()},
            **{f"base_{k}": v for k, v in base.items()}}


def train_config(unit: Unit, cfg: StudyConfig, folder: Path, principles: str | None = None):
    """`enigma train`'s options for one run; `principles` is the set's name or file (default: the unit's set)."""
    sami, ot = ABLATION[unit.variant]
    return TrainConfig(model=cfg.model, principles=principles or unit.set, steps=cfg.steps, prompts_per_step=cfg.prompts_per_step,
                       group_size=cfg.group_size, principles_per_prompt=2, max_new_tokens=cfg.max_new_tokens,
                       lr=cfg.lr, lora_r=cfg.lora_r, sami=sami, ot=ot, output_dir=str(folder),
                       save_every=max(1, cfg.steps // 5), save_total_limit=1, seed=unit.seed, device=cfg.device, dtype=cfg.dtype)


def train(unit: Unit, cfg: StudyConfig, root: Path, principles: str) -> Path:
    """Train the run (resuming from its newest checkpoint when one exists); returns the final checkpoint."""
    folder = unit.folder(root)
    final = folder / f"checkpoint-{cfg.steps}"
    if final.is_dir():
        return final
    tcfg = train_config(unit, cfg, folder, principles)
    if loading.newest_checkpoint(folder) is not None:
        tcfg = dataclasses.replace(tcfg, resume="latest")
    elif folder.exists():  # killed before its first checkpoint: nothing in it is worth keeping
        shutil.rmtree(folder)
    pset, examples = plan(tcfg)
    run(tcfg, pset, examples)
    return final


def do_run(unit: Unit, cfg: StudyConfig, root: Path, pset, principles: str, score_examples, eval_examples,
           models: Models) -> dict:
    start = time.perf_counter()
    models.release()  # the last unit's model would stay on the device while this run trains its own
    final = train(unit, cfg, root, principles)
    metrics = pd.read_csv(unit.folder(root) / "metrics.csv")
    lm = models.get(str(final))
    evaluation = evaluate_both(lm, pset, eval_examples, cfg)
    post = measure_si(lm, pset, score_examples, cfg, str(final))
    return {"set": unit.set, "variant": unit.variant, "seed": unit.seed, "k": pset.k,
            **training_outcomes(metrics), **evaluation, **downstream_outcomes(lm, cfg), "post_si": post["si"],
            "post_format_rate": post.get("format_rate"), "checkpoint": str(final.relative_to(root)),
            "seconds": time.perf_counter() - start}


def say(index: int, total: int, unit: Unit, result: dict, seconds: float) -> None:
    if unit.kind == "score":
        text = f"SI {result.get('pre_si', float('nan')):.3f}, base accuracy {result.get('base_accuracy_at_1', 0):.2f}"
    else:
        text = (f"accuracy {result.get('accuracy_at_1', float('nan')):.2f}, KL {result.get('kl_final', 0):.3f}, "
                f"SI after {result.get('post_si', float('nan')):.3f}")
    console.print(f"[{index}/{total}] {unit.name}: {text} ({seconds:.0f} s)", highlight=False)
