"""The fixed completions of `enigma analyze-manifold`: written once by the base model under each principle,
saved beside the report with a key of everything that produced them, and read back by every model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..models.loading import model_path_for
from ..models.rollout import generate
from ..prompts import render_prompt
from ..report import atomic_path

if TYPE_CHECKING:
    from .config import ManifoldConfig

COMPLETIONS_FILE = "completions.jsonl"


@dataclass(frozen=True)
class Completions:
    """The fixed completions every model reads; entry i was written under principle ``labels[i]``.

    ``groups[i]`` is the question index and ``samples[i]`` the sample index, so (group, sample) picks the K
    completions of one InfoNCE matrix. ``key`` fingerprints what produced them (see `completions_key`).
    """

    key: str
    principle_ids: tuple[str, ...]
    questions: tuple[str, ...]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    labels: list[int]
    groups: list[int]
    samples: list[int]

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def k(self) -> int:
        return len(self.principle_ids)

    def matrix_index(self) -> torch.Tensor:
        """[B, K] long: row b holds the completion written under principle j, for one (question, sample)."""
        where = {(g, s, lab): i for i, (g, s, lab) in enumerate(zip(self.groups, self.samples, self.labels))}
        cells = sorted({(g, s) for g, s in zip(self.groups, self.samples)})
        rows = []
        for g, s in cells:
            if any((g, s, j) not in where for j in range(self.k)):
                continue  # an incomplete cell cannot form a K × K matrix
            rows.append([where[(g, s, j)] for j in range(self.k)])
        return torch.tensor(rows, dtype=torch.long).view(-1, self.k)


def base_identity(spec: str) -> str:
    """What the base model is, for `completions_key`: its resolved path or hub id, plus local file stats.

    The size and mtime of the config and weight files are included, so that a checkpoint rewritten in place does
    not reuse completions written by its previous weights.
    """
    path, gguf = model_path_for(spec)
    folder = Path(path)
    if not folder.is_dir():
        return path  # a hub id
    names = [gguf] if gguf else sorted(
        f.name for f in folder.iterdir()
        if f.name in ("config.json", "adapter_config.json") or f.suffix in (".safetensors", ".bin")
    )
    stats = []
    for name in names:
        st = (folder / name).stat()
        stats.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join([path, *stats])


def completions_key(base_source: str, set_name: str, principles: Sequence[tuple[str, str]],
                    questions: Sequence[str], settings: ManifoldConfig) -> str:
    """A short fingerprint of everything that determines the completions (not batch size or device)."""
    payload = {
        "base": base_source, "set": set_name, "principles": [list(p) for p in principles],
        "questions": list(questions), "samples": settings.samples, "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature, "seed": settings.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def generate_completions(lm, pset, questions: Sequence[str], settings: ManifoldConfig,
                         key: str) -> Completions:
    """The base writes ``samples`` completions per (question, principle), principle in the system prompt."""
    k, m = pset.k, settings.samples
    prompts = [render_prompt(lm.tokenizer, p.text, q) for q in questions for p in pset.principles]
    gen = generate(lm.model, lm.tokenizer, prompts, num_samples=m, max_new_tokens=settings.max_new_tokens,
                   temperature=settings.temperature, seed=settings.seed, batch_size=settings.gen_batch_size)
    # sample (question q, principle j, sample s) sits at index (q*k + j)*m + s
    idx = range(len(gen))
    return Completions(
        key=key, principle_ids=pset.ids, questions=tuple(questions),
        prompt_ids=[list(p) for p in gen.prompt_ids], completion_ids=[list(c) for c in gen.completion_ids],
        texts=list(gen.texts), labels=[(i // m) % k for i in idx], groups=[i // (m * k) for i in idx],
        samples=[i % m for i in idx],
    )


def save_completions(comps: Completions, path: Path) -> None:
    """One JSON object per completion (ids included, so a reuse reads exactly the same tokens); atomic."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w") as fh:
        for i in range(len(comps)):
            g, lab = comps.groups[i], comps.labels[i]
            fh.write(json.dumps({
                "key": comps.key, "question_index": g, "question": comps.questions[g], "principle": lab,
                "principle_id": comps.principle_ids[lab], "sample": comps.samples[i],
                "prompt_ids": comps.prompt_ids[i], "completion_ids": comps.completion_ids[i],
                "text": comps.texts[i],
            }) + "\n")


def load_completions(path: Path, key: str, principle_ids: Sequence[str]) -> Completions | None:
    """The saved completions if the file exists, parses and carries ``key``; otherwise None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows or any(r["key"] != key for r in rows):
            return None
        questions: dict[int, str] = {}
        for r in rows:
            questions[int(r["question_index"])] = str(r["question"])
        return Completions(
            key=key, principle_ids=tuple(principle_ids),
            questions=tuple(questions[i] for i in range(len(questions))),
            prompt_ids=[[int(t) for t in r["prompt_ids"]] for r in rows],
            completion_ids=[[int(t) for t in r["completion_ids"]] for r in rows],
            texts=[str(r["text"]) for r in rows], labels=[int(r["principle"]) for r in rows],
            groups=[int(r["question_index"]) for r in rows], samples=[int(r["sample"]) for r in rows],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
