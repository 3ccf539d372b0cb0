r"""Format-only rewards for the ENIGMA chain-of-thought layout, and answer normalisation.

ENIGMA [1]_ rewards the *form* of a completion, never its correctness. A completion must read::

    <reasoning>
    …
    </reasoning>
    <answer>
    …
    </answer>

Three terms score a completion ``y`` (method.md §1):

- strict :math:`s(y) \in \{0, 1\}`: the whole completion matches the layout (the **gate**);
- soft :math:`o(y) \in \{0, 1\}`: ``<reasoning>.*?</reasoning>\s*<answer>.*?</answer>`` occurs anywhere
  (``re.DOTALL``);
- tag count :math:`t(y) \in [0, 1/2]`: :math:`0.125` for each of the four tag lines ``"<reasoning>\n"``,
  ``"\n</reasoning>\n"``, ``"\n<answer>\n"``, ``"\n</answer>"`` that occurs exactly once, minus :math:`0.001`
  per character after the first ``</answer>`` (the widely used "xmlcount" reward), so that a model that never yet
  produces the full layout still gets a gradient.

The combined reward is (**choice**, method.md §1)

.. math:: r(y) = w_s\, s(y) + w_o\, o(y) + w_t\, t(y),\qquad (w_s, w_o, w_t) = (1, 1/2, 1/2) \text{ by default.}

Choices that are ours (the papers do not fix them):

- *Strict layout.* Trailing whitespace after ``</answer>`` is accepted (one trailing newline, or whatever an EOS
  trim leaves); nothing may precede ``<reasoning>``. The reasoning and the answer must each be non-blank and may
  not contain any of the four tags, so duplicated or nested tags fail the gate.
- *Tag count.* Trailing whitespace after ``</answer>`` is not penalised (consistent with the strict gate). The
  "xmlcount" original penalises the tail twice and can go negative; we penalise once, per character of
  ``tail.rstrip()`` after the *first* ``</answer>``, and clip the term at 0 (``clip_at_zero=True``) so that it lies
  in :math:`[0, 1/2]`. Both the per-character penalty and the clipping are arguments.
- *Parsing.* The answer is the stripped body of the first ``<answer>…</answer>`` block even when the layout is not
  strict; a missing or blank answer is ``None`` (unparsable for the answer-level rewards of
  :mod:`enigma_cli.core.answer_rewards`).
- *Normalisation* (:func:`normalize_answer`): exact rational arithmetic, so ``12``, ``12.0``, ``1,200``/``1200``,
  ``$5`` and ``3/4``/``0.75`` compare equal; a non-terminating fraction keeps the reduced form ``p/q`` rather than
  a rounded decimal.

References
----------
.. [1] Seneque et al., "ENIGMA: The Geometry of Reasoning and Alignment in Large-Language Models",
   arXiv:2510.11278 (2025).
.. [2] Mohri, Schneider, Wu, "Distributional Alignment Games for Answer-Level Fine-Tuning", arXiv:2604.27166
   (2026) — consumes the answers parsed here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

__all__ = [
    "TAG_LINES",
    "ParsedCompletion",
    "format_reward",
    "normalize_answer",
    "parse_completion",
    "soft_format_reward",
    "strict_format_reward",
    "tag_count_reward",
]

#: The four tag lines counted by :func:`tag_count_reward`, in layout order.
TAG_LINES: tuple[str, ...] = ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>")
_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")

_STRICT_RE = re.compile(
    r"\A<reasoning>\n(?P<reasoning>.*?)\n</reasoning>\n<answer>\n(?P<answer>.*?)\n</answer>\s*\Z", re.DOTALL
)
_SOFT_RE = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
_REASONING_RE = re.compile(r"<reasoning>(.*?)</reasoning>", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class ParsedCompletion:
    """A completion split into its reasoning and answer.

    Attributes
    ----------
    reasoning : str or None
        Stripped body of the first ``<reasoning>…</reasoning>`` block; ``None`` when there is none.
    answer : str or None
        Stripped body of the first ``<answer>…</answer>`` block; ``None`` when there is none or it is blank.
    strict : bool
        The whole completion matches the layout (the gate).
    soft : bool
        ``<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>`` occurs somewhere in the completion.
    """

    reasoning: str | None
    answer: str | None
    strict: bool
    soft: bool


def _has_tag(text: str) -> bool:
    return any(tag in text for tag in _TAGS)


def _is_strict(text: str) -> bool:
    m = _STRICT_RE.match(text)
    if m is None:
        return False
    reasoning, answer = m.group("reasoning"), m.group("answer")
    if not reasoning.strip() or not answer.strip():
        return False
    # The lazy groups can swallow a repeated block; any tag inside a body means a tag is duplicated.
    return not (_has_tag(reasoning) or _has_tag(answer))


def parse_completion(text: str) -> ParsedCompletion:
    """Parse one completion against the ``<reasoning>``/``<answer>`` layout.

    Parameters
    ----------
    text : str
        The decoded completion (prompt excluded).

    Returns
    -------
    ParsedCompletion
        ``strict`` and ``soft`` flags and the stripped reasoning and answer. The answer comes from the first
        ``<answer>…</answer>`` block even when the layout is not strict, so that malformed but answered
        completions still take part in answer-level rewards.

    Examples
    --------
    >>> p = parse_completion("<reasoning>\\n2+2\\n</reasoning>\\n<answer>\\n4\\n</answer>\\n")
    >>> p.answer, p.strict, p.soft
    ('4', True, True)
    """
    r = _REASONING_RE.search(text)
    a = _ANSWER_RE.search(text)
    answer = a.group(1).strip() if a is not None else None
    return ParsedCompletion(
        reasoning=r.group(1).strip() if r is not None else None,
        answer=answer or None,
        strict=_is_strict(text),
        soft=_SOFT_RE.search(text) is not None,
    )


def strict_format_reward(texts: Sequence[str]) -> list[float]:
    """Strict-layout gate: 1.0 when the whole completion matches the layout, else 0.0.

    Parameters
    ----------
    texts : sequence of str
        Completions.

    Returns
    -------
    list of float
        One value in {0.0, 1.0} per completion.
    """
    return [1.0 if _is_strict(t) else 0.0 for t in texts]


def soft_format_reward(texts: Sequence[str]) -> list[float]:
    """Soft-layout credit: 1.0 when ``<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>`` occurs, else 0.0.

    Parameters
    ----------
    texts : sequence of str
        Completions.

    Returns
    -------
    list of float
        One value in {0.0, 1.0} per completion.
    """
    return [1.0 if _SOFT_RE.search(t) is not None else 0.0 for t in texts]


def _tag_count(text: str, per_char: float, clip_at_zero: bool) -> float:
    score = sum(0.125 for tag in TAG_LINES if text.count(tag) == 1)
    end = text.find("</answer>")
    if end >= 0:
        score -= per_char * len(text[end + len("</answer>") :].rstrip())
    return max(score, 0.0) if clip_at_zero else score


def tag_count_reward(
    texts: Sequence[str], *, penalty_per_char: float = 0.001, clip_at_zero: bool = True
) -> list[float]:
    r"""Tag-count credit ("xmlcount"): a small credit per tag line, a small penalty per trailing character.

    .. math:: t(y) = \tfrac18 \sum_{\ell \in L} \mathbf 1[\#_\ell(y) = 1]
                     - \lambda\, |\mathrm{rstrip}(\mathrm{tail}(y))|

    with :math:`L` = ``TAG_LINES``, :math:`\#_\ell(y)` the number of occurrences of :math:`\ell` in :math:`y`,
    :math:`\mathrm{tail}(y)` the text after the first ``</answer>`` (empty if there is none) and
    :math:`\lambda` = ``penalty_per_char``.

    Parameters
    ----------
    texts : sequence of str
        Completions.
    penalty_per_char : float, default 0.001
        Penalty per non-trailing-whitespace character after the first ``</answer>``.
    clip_at_zero : bool, default True
        Clip the result at 0 (our choice), so that it lies in [0, 0.5].

    Returns
    -------
    list of float
        One value per completion; 0.5 for a perfect layout.
    """
    return [_tag_count(t, penalty_per_char, clip_at_zero) for t in texts]


def format_reward(
    texts: Sequence[str],
    w_strict: float = 1.0,
    w_soft: float = 0.5,
    w_tags: float = 0.5,
    *,
    penalty_per_char: float = 0.001,
    clip_at_zero: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Combined format-only reward :math:`r = w_s\,s + w_o\,o + w_t\,t` (method.md §1, a choice).

    Parameters
    ----------
    texts : sequence of str
        Completions, N of them.
    w_strict, w_soft, w_tags : float
        Weights of the strict gate, the soft credit and the tag-count term.
    penalty_per_char, clip_at_zero
        Passed to :func:`tag_count_reward`.

    Returns
    -------
    reward : torch.Tensor
        Shape ``(N,)``, float32.
    terms : dict of str to torch.Tensor
        The unweighted terms ``"strict"``, ``"soft"`` and ``"tags"``, each shape ``(N,)`` float32, for logging.
    """
    terms = {
        "strict": torch.tensor(strict_format_reward(texts), dtype=torch.float32),
        "soft": torch.tensor(soft_format_reward(texts), dtype=torch.float32),
        "tags": torch.tensor(
            tag_count_reward(texts, penalty_per_char=penalty_per_char, clip_at_zero=clip_at_zero),
            dtype=torch.float32,
        ),
    }
    reward = w_strict * terms["strict"] + w_soft * terms["soft"] + w_tags * terms["tags"]
    return reward.reshape(len(texts)), terms


# ---------------------------------------------------------------------------------------------------------------
# Answer normalisation
# ---------------------------------------------------------------------------------------------------------------

# Stripped from both ends in text mode: whitespace, quotes, brackets and markdown emphasis; sentence punctuation
# only from the right (a leading "." may start ".5"). Signs, "$", "%" and "#" are kept: they change meaning.
_WRAP = " \t\r\n\f\v\"'`“”‘’«»„*_()[]{}"
_TRAILING = _WRAP + ".,;:!?"
# Stripped before trying a number: whitespace, quotes and markdown emphasis only (never "." or "-").
_NUM_WRAP = " \t\r\n\f\v\"'`“”‘’«»„*"
_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER_RE = re.compile(rf"(?P<sign>[+-]?)(?P<num>{_DECIMAL})(?:/(?P<den>{_DECIMAL}))?")
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:(?P<sep>[, ])\d{3})(?:(?P=sep)\d{3})*(?:\.\d*)?")
_PREFIX_RE = re.compile(r"(?P<s1>[+-]?)\s*\$?\s*(?P<s2>[+-]?)\s*")
_EXPONENT_RE = re.compile(r"[eE]([+-]?\d+)")
_MAX_EXPONENT = 400  # larger exponents would make exact arithmetic slow; such strings stay text


def _canonical(value: Fraction) -> str:
    """Integer, terminating decimal, or reduced ``p/q``: one spelling per rational number."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    value = abs(value)
    num, den = value.numerator, value.denominator
    if den == 1:
        return f"{sign}{num}"
    twos = fives = 0
    d = den
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d != 1:
        return f"{sign}{num}/{den}"
    k = max(twos, fives)
    digits = str(num * 10**k // den).rjust(k + 1, "0")
    return f"{sign}{digits[:-k]}.{digits[-k:]}".rstrip("0").rstrip(".")


def _parse_number(s: str) -> Fraction | None:
    s = s.strip(_NUM_WRAP)
    # A sign and a leading "$" in either order ("-$5", "$-5", "$ 5"), at most one sign.
    prefix = _PREFIX_RE.match(s)
    if prefix.group("s1") and prefix.group("s2"):
        return None
    sign = prefix.group("s1") or prefix.group("s2")
    s = s[prefix.end() :]
    if s.endswith("."):
        s = s[:-1].rstrip()
    # Thousands separators: "1,200" / "1 200" / "1,234,567.5"; "1,2" or "3 5" are not numbers.
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    s = re.sub(r"\s*/\s*", "/", s)
    m = _NUMBER_RE.fullmatch(sign + s)
    if m is None:
        return None
    if any(abs(int(e)) > _MAX_EXPONENT for e in _EXPONENT_RE.findall(s)):
        return None
    value = Fraction(m.group("num"))
    if m.group("den") is not None:
        den = Fraction(m.group("den"))
        if den == 0:
            return None
        value /= den
    return -value if m.group("sign") == "-" else value


def normalize_answer(s: str | None, numeric: bool = True) -> str | None:
    """Normalise a parsed answer so that equivalent answers compare equal.

    Parameters
    ----------
    s : str or None
        The answer (usually :attr:`ParsedCompletion.answer`).
    numeric : bool, default True
        Try to read ``s`` as a number first. Spaces around it, thousands separators (``1,200``, ``1 200``), a
        leading ``$`` and a trailing ``.`` are dropped; decimals, exponents (``1e3``) and fractions (``3/4``) are
        read exactly and written canonically: an integer (``12``), a terminating decimal without trailing zeros
        (``0.75``), or else a reduced fraction (``1/3``); ``-0`` is ``0``. A string that is not a number falls
        back to text mode.

    Returns
    -------
    str or None
        The canonical form; ``None`` for ``None`` or a string with no content left (``""``, ``"..."``).

    Notes
    -----
    Text mode lowercases, collapses runs of whitespace to one space, strips surrounding whitespace, quotes,
    brackets and markdown ``*``/``_``, and trailing sentence punctuation (``.,;:!?``). Signs, ``$`` and ``%`` are
    kept. In numeric mode the text-mode cleaning is tried as a number too, so ``(12.0)!`` gives ``12``; the result
    is idempotent. Units (``12 cm``) and LaTeX (``\\boxed{12}``) are not interpreted.

    Examples
    --------
    >>> [normalize_answer(x) for x in ["12", " 12.00 ", "$1,200", "3/4", "-0", "The  Paris."]]
    ['12', '12', '1200', '0.75', '0', 'the paris']
    """
    if s is None:
        return None
    text = " ".join(s.split()).lower().lstrip(_WRAP).rstrip(_TRAILING)
    text = " ".join(text.split())
    if numeric:
        # Try the raw string, then its text-mode cleaning ("(12.0)!" → "12.0"), so that the result is idempotent.
        for candidate in (s, text):
            value = _parse_number(candidate)
            if value is not None:
                return _canonical(value)
    return text or None
