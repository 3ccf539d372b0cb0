"""A pool of candidate principles, and principle sets drawn from it as K-subsets.

A pool is the distinct principles of some sets (shipped names, YAML files or folders, as `resolve_sets` reads
them). One principle is one id: the same id with the same text in two sets (show-steps is in three shipped sets) is
one member, the same id with another text is an error, since reports name principles by id. A K-subset becomes an
ordinary `PrincipleSet` named by its ids joined with ``+``, in pool order, so every command that takes a set takes
it (`write_set` puts it in a YAML file of the usual schema).
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import yaml

from .errors import InputError
from .principles import Principle, PrincipleSet, resolve_sets
from .report import atomic_path

MAX_POOL = 64  # C(64, 2) = 2,016 pairs; larger pools are a different tool's job
SEPARATOR = "+"


def pool_members(specs: list[str] | tuple[str, ...]) -> list[Principle]:
    """The distinct principles of the sets `specs` name, in order of first appearance (one sentence on a clash)."""
    if not specs:
        raise InputError("the principle pool is empty: give at least one set name, YAML file or folder.")
    members: dict[str, tuple[Principle, str]] = {}
    texts: dict[str, str] = {}
    for pset in resolve_sets(list(specs)):
        where = str(pset.path or pset.name)
        for p in pset.principles:
            if p.id in members:
                if members[p.id][0].text != p.text:
                    raise InputError(f"principle id {p.id!r} has two different texts in the pool ({members[p.id][1]} "
                                     f"and {where}); give one of them another id.")
                continue
            if p.text in texts:
                raise InputError(f"principles {texts[p.text]!r} and {p.id!r} of the pool have the same text; keep "
                                 "one of them.")
            members[p.id], texts[p.text] = (p, where), p.id
    if len(members) > MAX_POOL:
        raise InputError(f"the pool holds {len(members)} principles, more than the {MAX_POOL} a pool may hold.")
    return [p for p, _ in members.values()]


def subsets(members: list[Principle], k: int, n: int | None = None, seed: int = 0) -> list[PrincipleSet]:
    """`n` of the K-subsets of the pool (every one when `n` is None or covers them all), drawn uniformly without
    replacement with `seed`; each comes back in the order of `itertools.combinations`."""
    if k < 2:
        raise InputError(f"--choose must be at least 2 (InfoNCE needs K ≥ 2 principles), not {k}.")
    if k >= len(members):
        raise InputError(f"--choose {k} needs a pool of more than {k} principles; the pool holds {len(members)}.")
    total = math.comb(len(members), k)
    if n is not None and n < total:  # the drawn ranks, decoded without listing every subset
        combos = [_combination(i, len(members), k) for i in sorted(random.Random(seed).sample(range(total), n))]
    else:
        combos = list(itertools.combinations(range(len(members)), k))
    return [as_set(tuple(members[i] for i in combo)) for combo in combos]


def _combination(rank: int, n: int, k: int) -> tuple[int, ...]:
    """The `rank`-th K-subset of range(n) in the order `itertools.combinations` lists them (combinatorial
    number system)."""
    out, x = [], 0
    for slots in range(k, 0, -1):
        while (below := math.comb(n - x - 1, slots - 1)) <= rank:  # subsets that start with x: skip past them
            rank -= below
            x += 1
        out.append(x)
        x += 1
    return tuple(out)


def as_set(principles: tuple[Principle, ...]) -> PrincipleSet:
    name = SEPARATOR.join(p.id for p in principles)
    return PrincipleSet(name, f"{len(principles)} principles drawn from a pool: {', '.join(p.id for p in principles)}.",
                        principles)


def set_yaml(pset: PrincipleSet) -> str:
    """`pset` as YAML text of the usual schema."""
    data = {"name": pset.name, "description": pset.description,
            "principles": [{k: v for k, v in (("id", p.id), ("text", p.text), ("antithesis", p.antithesis)) if v}
                           for p in pset.principles]}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_set(pset: PrincipleSet, path: Path) -> Path:
    """`pset` as a YAML file of the usual schema (atomically), so `enigma train --principles FILE` reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(set_yaml(pset))
    return path
