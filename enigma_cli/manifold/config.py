"""`ManifoldConfig`: every option of `enigma analyze-manifold` (the single source of its flags)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..options import Options, device_opt, dtype_opt, opt
from ..report import FORMATS
from .shape import parse_layers

MODEL_FORMS = "enigma-tiny, smollm2, a save_pretrained folder, a LoRA adapter folder, a run folder or a hub id"


@dataclass(frozen=True)
class ManifoldConfig(Options):
    base: str = opt("enigma-tiny", f"Base model: {MODEL_FORMS}.")
    trained: tuple[str, ...] = opt((), "A trained checkpoint (same forms as --base); repeat for several.")
    principles: str = opt("stepwise-vs-oneline", "Principle set: a shipped name or a YAML file.")
    dataset: str = opt("synthetic", "Questions: 'synthetic' (built-in held-out problems), a JSONL/CSV/parquet "
                                    "file, or a hub id.")
    question_column: str | None = opt(None, "Column holding the question.")
    prompts: int = opt(32, "Questions (N).", ge=1)
    samples: int = opt(2, "Completions per question and principle.", ge=1)
    max_new_tokens: int = opt(96, "Longest completion, in tokens.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature of the base (0 = greedy).", ge=0)
    layers: str = opt("all", "'all' (hidden states 0..L) or a list such as 0,6,-1.")
    tokens: int = opt(1024, "Completion tokens sampled for TwoNN, token effective rank, Fisher-Rao and KL.", ge=1)
    eps: float = opt(0.05, "Sinkhorn ε on L2-normalised pooled states.", gt=0)
    pca_k: int = opt(8, "Dimension of the PCA subspaces compared by principal angles.", ge=1)
    folds: int = opt(5, "Cross-validation folds of the principle probe.", ge=2)
    batch_size: int = opt(16, "Sequences per forward pass when reading (full logits).", ge=1)
    gen_batch_size: int = opt(64, "Sequences per generate call.", ge=1)
    reuse: bool = opt(True, "Reuse OUT_DIR/completions.jsonl when it matches the config.", negative="--regenerate")
    seed: int = opt(0, "Seed of questions, sampling, token subsample and probe folds.")
    device: str = device_opt()
    dtype: str = dtype_opt(" (states are kept in fp32)")
    out_dir: str | None = opt(None, "Write manifold.<format>, manifold.png, config.yaml and completions.jsonl here "
                                    "(default: the table to stdout, nothing saved).", output="dir")
    format: str = opt("csv", "Report format.", choices=FORMATS)

    def check(self) -> None:
        if not self.trained:
            raise InputError("give at least one --trained checkpoint to compare with the base model.")

        parse_layers(self.layers)
