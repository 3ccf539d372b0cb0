"""Reward functions of your own: ``--reward format,my_rewards.py:brevity=0.5``.

A term ``SOURCE:FUNCTION[=WEIGHT]`` names a Python file (``my_rewards.py``, ``rewards/mine.py``) or an importable
module (``mypkg.rewards``) and a function in it with TRL's reward signature::

    def brevity(prompts, completions, **kwargs) -> list[float | None]: ...

``prompts`` are the rendered prompts, ``completions`` the completion texts, and the keyword arguments the
dataset's columns, one value per completion (``question`` and ``answer`` in `enigma train`'s own loop; every
column, as TRL passes them, on ``--backend trl``). The term is logged as ``reward_<FUNCTION>``. ``None`` means
"no opinion on this completion", as in TRL: it adds nothing to the total (TRL's ``nansum``) and is left out of the
logged mean. Anything else — an import error, a missing function, a result of the wrong length, a value that is
not a finite number — is refused in one sentence naming the file and the function, and `enigma train` calls every
such function once on two rows of the data before it writes anything (`probe`), so a broken reward stops the run
before its first update.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import InputError, first_line


@dataclass(frozen=True)
class CustomReward:
    """One ``SOURCE:FUNCTION`` term: `name` is the function's name, under which the term is logged."""

    source: str
    name: str

    @property
    def where(self) -> str:
        return f"reward function {self.name!r} of {self.source}"

    def load(self) -> Callable:
        return _load(self.source, self.name)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> torch.Tensor:
        """The function's values as a float tensor (NaN where it returned None), checked as the module says."""
        fn = self.load()
        try:
            out = fn(prompts=list(prompts), completions=list(completions), **columns)
        except Exception as err:  # noqa: BLE001 - the user's code: any failure is reported in one sentence
            raise InputError(f"{self.where} failed: {type(err).__name__}: {first_line(err)}") from None
        try:
            values = list(out)
        except TypeError:
            raise InputError(f"{self.where} returned {type(out).__name__}, not a list of numbers (one per "
                             "completion).") from None
        if len(values) != len(completions):
            raise InputError(f"{self.where} returned {len(values)} values for {len(completions)} completions; it "
                             "must return one per completion.")
        return torch.tensor([self._number(v, i) for i, v in enumerate(values)], dtype=torch.float32)

    def _number(self, value, index: int) -> float:
        if value is None:
            return math.nan
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.where} returned {type(value).__name__} {value!r} for completion {index}; "
                             "each value must be a number or None.") from None
        if not math.isfinite(x):
            raise InputError(f"{self.where} returned a non-finite value ({x}) for completion {index}; return a "
                             "finite number, or None for no opinion.")
        return x


def parse(term: str) -> CustomReward:
    """``"my_rewards.py:brevity"`` → CustomReward, loaded now: an import error or a missing function is refused."""
    source, _, name = term.rpartition(":")
    source, name = source.strip(), name.strip()
    if not source or not name.isidentifier():
        raise InputError(f"--reward {term!r}: a reward of your own is SOURCE:FUNCTION, e.g. my_rewards.py:brevity.")
    reward = CustomReward(source, name)
    reward.load()
    return reward


def _is_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


@lru_cache(maxsize=64)
def _load(source: str, name: str) -> Callable:
    where = f"reward function {name!r} of {source}"
    if _is_file(source):
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"--reward: no such file {source} (for {where}).")
        # a module name of its own per file, so two files called rewards.py do not shadow each other
        module_name = "enigma_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - the user's file: report its error in one sentence
            del sys.modules[module_name]
            raise InputError(f"--reward: importing {source} failed ({type(err).__name__}: {first_line(err)}), so "
                             f"{where} cannot be used.") from None
    else:
        try:
            module = importlib.import_module(source)
        except Exception as err:  # noqa: BLE001 - ModuleNotFoundError or the module's own error
            raise InputError(f"--reward: importing module {source} failed ({type(err).__name__}: "
                             f"{first_line(err)}), so {where} cannot be used.") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise InputError(f"--reward: {source} has no function {name!r}.")
    if not callable(fn):
        raise InputError(f"--reward: {source}'s {name!r} is a {type(fn).__name__}, not a function.")
    return fn


def probe(rewards: Sequence[CustomReward], examples) -> None:
    """Call each function once on (up to) two rows, with completions in the layout, before anything is written."""
    rows = list(examples[:2])
    if not rows or not rewards:
        return
    completions = [f"<reasoning>\n{ex.question}\n</reasoning>\n<answer>\n{ex.answer or ''}\n</answer>" for ex in rows]
    for reward in rewards:
        reward([ex.prompt_text for ex in rows], completions, question=[ex.question for ex in rows],
               answer=[ex.answer for ex in rows])
