"""Questions to reason about: the built-in synthetic set, a local file, or a Hugging Face hub dataset.

``load_examples(dataset)`` accepts

- ``None`` or ``"synthetic"``: built-in problems from :mod:`enigma_cli.tasks.synthetic`, never seen in
  enigma-tiny's pre-training, with the seed stream ``seed + 10_000_000`` (:data:`SYNTHETIC_SEED_OFFSET`): with
  ``purpose="train"`` (what `enigma train` asks for) from the held-out pool ``"rl"``, otherwise from the pool
  ``"test"``, so an evaluation never sees a question GRPO trained on, whatever the seeds; works offline (`enigma
  sft` renders its synthetic rows from the pre-training pool itself, `enigma_cli.sft.data`);
- a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file (or a ``save_to_disk`` folder), read through
  ``datasets``; a local file has a single split, so ``split`` is ignored for it;
- otherwise a hub id (e.g. ``gsm8k`` or ``kaist-ai/CoT-Collection``), only when online: with ``HF_HUB_OFFLINE``
  or ``HF_DATASETS_OFFLINE`` set, or the hub unreachable, it is a one-sentence :class:`InputError`. A subset
  (configuration) and a split can be named in the spec: ``openai/gsm8k:main@test`` (`parse_hub_spec`); the split
  defaults to ``split`` (``train``).

Columns: ``question_column``/``answer_column`` default to ``question``/``answer``, and CoT-Collection's
``source``/``target`` (with ``rationale``) are recognised when the defaults are absent. Without an answer
column the examples are unlabelled (``answer=None``), which is enough for format-only rewards (method.md §1).
GSM8K-style answers ("... #### 42") are cut to the part after the last ``####``; the part before it (without
the ``<<48/2=24>>`` calculator notes) becomes the rationale when there is no rationale column.

Multiple choice: a ``choices_column`` (default: ``choices`` or ``options`` when present) holds a list of option
texts, a ``{"label": [...], "text": [...]}`` mapping (ARC, CommonsenseQA) or one string ``"A) … B) …"``; option
texts lose a leading ``A)``-style label. The answer becomes a letter: a letter (``B``, ``(B)``), the exact text of
an option, or an integer read as a 0-based index (MMLU's convention), in that order. :attr:`Example.prompt_text`
is the question with its options, one ``A) …`` line each.

Every problem with the input (missing path, folder, empty or unreadable file, missing column, no rows) is an
:class:`InputError` (exit code 3) of one sentence naming the file or column.
"""

from __future__ import annotations

import codecs
import os
import random
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .cells import LETTERS, choice_answer, parse_choices
from .cells import cell_text as _text
from .console import show_progress
from .errors import InputError, first_line
from .tasks.synthetic import generate_problems

# Hugging Face `datasets` is imported inside the three functions that read a dataset: it adds ~0.1 s to
# `enigma --help`, whose import path runs through this module.

SYNTHETIC = "synthetic"
SYNTHETIC_SEED_OFFSET = 10_000_000
DEFAULT_SYNTHETIC_N = 256
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
QUESTION_COLUMNS = ("question", "source")  # tried in order when --question-column is not given
ANSWER_COLUMNS = ("answer", "target")
RATIONALE_COLUMNS = ("rationale",)
CHOICES_COLUMNS = ("choices", "options")


@dataclass(frozen=True)
class Example:
    """One question; `answer` is None for unlabelled data; `rationale` is a reference CoT when known.

    For multiple-choice data `choices` holds the option texts and `answer` is a letter (``"A"`` for the first).
    """

    question: str
    answer: str | None
    rationale: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def prompt_text(self) -> str:
        """What the model is asked: the question, then one ``A) option`` line per choice."""
        if not self.choices:
            return self.question
        lines = [f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices)]
        return "\n".join([self.question, *lines])


def _offline_flag() -> str | None:
    """The environment variable that puts the hub offline, if one is set."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(key, "").strip().lower() in ("1", "true", "yes", "on"):
            return key
    return None


def _looks_local(spec: str) -> bool:
    p = Path(spec).expanduser()
    return (p.exists() or p.suffix.lower() in LOCAL_FORMATS or spec.startswith(("/", "./", "../", "~"))
            or os.sep != "/" and os.sep in spec)


def _synthetic(n: int | None, seed: int, pool: str) -> list[Example]:
    count = DEFAULT_SYNTHETIC_N if n is None else n
    problems = generate_problems(count, seed + SYNTHETIC_SEED_OFFSET, split=pool)
    return [Example(p.question, p.answer) for p in problems]


@contextmanager
def _quiet_progress(datasets):
    """datasets' progress bars only when a person watches stderr (conventions.md); restored afterwards."""
    silence = not show_progress() and datasets.utils.logging.is_progress_bar_enabled()
    if silence:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if silence:
            datasets.enable_progress_bars()


def _load_local(path: Path):
    """A `datasets.Dataset` from a local file or save_to_disk folder."""
    import datasets

    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as err:  # any failure to read is bad input
                raise InputError(f"dataset folder {str(path)!r} cannot be read ({first_line(err)}).") from err
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[next(iter(ds))]
            return ds
        raise InputError(f"dataset {str(path)!r} is a folder; give a .jsonl, .json, .csv or .parquet file.")
    builder = LOCAL_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise InputError(f"dataset file {str(path)!r} has an unknown extension; use .jsonl, .json, .csv "
                         "or .parquet.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as err:
        raise InputError(f"dataset file {str(path)!r} cannot be read ({err.strerror or first_line(err)}).") \
            from err
    if size == 0 or (builder != "parquet" and size <= len(head) and not head.strip()):
        raise InputError(f"dataset file {str(path)!r} is empty.")
    if builder != "parquet":
        _check_utf8(path)
    try:
        with _quiet_progress(datasets), _quiet_logs(datasets):
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # malformed JSON/CSV/parquet raise many exception types
        if "corresponds to no data" in str(err):  # a CSV header with no rows, a JSON file of []
            raise InputError(f"dataset file {str(path)!r} has no rows.") from err
        raise InputError(f"dataset file {str(path)!r} cannot be read as {path.suffix.lstrip('.')} "
                         f"({first_line(_root_cause(err))}).") from err


# -- reliability: text encoding, library log lines, the real cause of a failure ---------------------------------
def _check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """JSON and CSV files must be UTF-8. pyarrow reads other bytes without complaint and fails only when a row is
    turned into text, long after loading; so decode the file once here (about 1 GB/s) and name the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:  # err.object: the bytes held over from the last block + this one
                held = len(err.object) - len(block)
                at = offset - held + err.start
                line += err.object[held: err.start].count(b"\n")
                raise InputError(f"dataset file {str(path)!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                                 f"line {line}, byte offset {at}); save it as UTF-8.") from None
            if not block:
                return
            offset += len(block)
            line += block.count(b"\n")


@contextmanager
def _quiet_logs(datasets):
    """datasets logs a bad file at ERROR level and then raises; our own sentence says it, once."""
    logging = datasets.utils.logging
    before = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain ('EOF inside string', not 'An error occurred while generating')."""
    seen = {id(err)}
    while (nxt := err.__cause__ or err.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        err = nxt
    return err


def _unreachable_hub(timeout: float = 3.0) -> str | None:
    """The hub's host when a quick TCP connection to it fails, else None.

    Without this probe `datasets` retries for ~25 s with a warning per attempt before it gives up. Behind a
    proxy the direct connection says nothing, so the probe is skipped there.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return host
    return None


def parse_hub_spec(spec: str, split: str) -> tuple[str, str | None, str]:
    """``NAME[:SUBSET][@SPLIT]`` → (name, subset or None, split); the split defaults to `split`."""
    name, at, chosen = spec.partition("@")
    name, colon, subset = name.partition(":")
    if (colon and not subset) or (at and not chosen) or not name:
        raise InputError(f"dataset {spec!r}: write a hub dataset as NAME, NAME:SUBSET, NAME@SPLIT or "
                         "NAME:SUBSET@SPLIT.")
    return name, subset or None, chosen or split


def _load_hub(spec: str, split: str, n: int | None, seed: int):
    name, subset, split = parse_hub_spec(spec, split)
    flag = _offline_flag()
    if flag:
        raise InputError(f"dataset {name!r} is neither 'synthetic' nor a local file, and the hub is offline "
                         f"({flag} is set); give a local .jsonl/.csv/.parquet file or 'synthetic'.")
    host = _unreachable_hub()
    if host:
        raise InputError(f"dataset {name!r} is neither 'synthetic' nor a local file, and the hub ({host}) cannot "
                         "be reached; give a local .jsonl/.csv/.parquet file or 'synthetic'.")
    import datasets

    try:
        with _quiet_progress(datasets):
            return _hub_rows(datasets, name, subset, split, n, seed)
    except Exception as err:  # not found, no network, bad subset or split: one sentence
        which = f"subset {subset!r}, " if subset else ""
        raise InputError(f"dataset {name!r} ({which}split {split!r}) cannot be loaded from the hub "
                         f"({first_line(err)}).") from err


def _hub_rows(datasets, name: str, subset: str | None, split: str, n: int | None, seed: int):
    if n is not None:
        # Hub sets can be huge (CoT-Collection: 1.8M rows): stream and sample n from a seeded buffer.
        stream = datasets.load_dataset(name, subset, split=split, streaming=True)
        rows = list(stream.shuffle(seed=seed, buffer_size=max(10_000, 4 * n)).take(n))
        return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})
    return datasets.load_dataset(name, subset, split=split)


def _pick(columns: list[str], given: str | None, defaults: tuple[str, ...], what: str, flag: str,
          where: str, *, required: bool) -> str | None:
    if given is not None:
        if given not in columns:
            raise InputError(f"{where} has no {what} column {given!r} ({flag}); available columns: "
                             f"{', '.join(columns) or 'none'}.")
        return given
    for name in defaults:
        if name in columns:
            return name
    if required:
        raise InputError(f"{where} has no {what} column (looked for {' or '.join(map(repr, defaults))}; pass "
                         f"{flag}); available columns: {', '.join(columns) or 'none'}.")
    return None


def _canonical_answer(value) -> tuple[str | None, str | None]:
    """(answer, rationale): GSM8K's "rationale #### 42" is split, its <<a*b=c>> calculator notes dropped."""
    text = _text(value)
    if text is not None and "####" in text:  # GSM8K: rationale, then "#### 42"
        before, after = text.rsplit("####", 1)
        rationale = re.sub(r"<<[^<>]*>>", "", before).strip() or None
        return after.strip() or None, rationale
    return text, None


def _column(ds, name: str) -> list:
    """A whole column as Python values. A plain column (a `datasets.Value`: text, numbers) is read through Arrow,
    since `ds[name]` formats row by row (65 s for the question and answer columns of 2M rows, against 0.2 s);
    other features (lists, mappings, JSON cells of mixed type) need `datasets`' own decoding."""
    import datasets

    if isinstance(ds.features.get(name), datasets.Value):
        return ds.with_format("arrow")[name].to_pylist()
    return list(ds[name])


def load_examples(dataset: str | None = None, *, n: int | None = None, seed: int = 0,
                  question_column: str | None = None, answer_column: str | None = None,
                  split: str = "train", rationale_column: str | None = None,
                  choices_column: str | None = None, purpose: str = "eval") -> list[Example]:
    """Load questions (and answers when there are some); a seeded sample of `n` when `n` < the row count.

    `purpose` is "train" for the questions a model learns from (`enigma train`, `enigma sft`), "eval" otherwise;
    for the synthetic problems it picks the disjoint pool (see the module docstring).
    """
    if n is not None and n <= 0:
        raise InputError(f"--n must be a positive number of examples, not {n}.")
    if dataset is None or str(dataset).strip().lower() == SYNTHETIC:
        if choices_column is not None:
            raise InputError(f"--choices-column {choices_column!r} needs a --dataset; the synthetic problems have "
                             "no options.")
        return _synthetic(n, seed, "rl" if purpose == "train" else "test")
    spec = str(dataset).strip()
    if _looks_local(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise InputError(f"dataset file {spec!r} does not exist.")
        ds, where = _load_local(path), f"dataset file {spec!r}"
    else:
        ds, where = _load_hub(spec, split, n, seed), f"dataset {spec!r}"

    columns = list(ds.column_names)
    if len(ds) == 0:
        raise InputError(f"{where} has no rows.")
    q_col = _pick(columns, question_column, QUESTION_COLUMNS, "question", "--question-column", where,
                  required=True)
    a_col = _pick(columns, answer_column, ANSWER_COLUMNS, "answer", "--answer-column", where, required=False)
    r_col = _pick(columns, rationale_column, RATIONALE_COLUMNS, "rationale", "--rationale-column", where,
                  required=False)

    c_col = _pick(columns, choices_column, CHOICES_COLUMNS, "choices", "--choices-column", where, required=False)

    questions = [_text(q) for q in _column(ds, q_col)]
    index = [i for i, q in enumerate(questions) if q is not None]
    if not index:
        raise InputError(f"{where} has no non-empty values in its question column {q_col!r}.")
    if n is not None and n < len(index):
        index = sorted(random.Random(seed).sample(index, n))

    def cells(col):  # indexing Python lists: `ds.select(index)` would hash the index list (10 s at 2M rows)
        if col is None:
            return [None] * len(index)
        values = _column(ds, col)
        return [values[i] for i in index]

    answers, rationales, choices = cells(a_col), cells(r_col), cells(c_col)
    out = []
    for i, a, r, c in zip(index, answers, rationales, choices):
        if c_col is None:
            answer, gsm_rationale = _canonical_answer(a)
            out.append(Example(questions[i], answer, _text(r) or gsm_rationale))
            continue
        options = parse_choices(c)
        if options is None or len(options) > len(LETTERS):
            raise InputError(f"{where}: row {i} has no readable options in its choices column {c_col!r} (give a "
                             "list of option texts or one 'A) … B) …' string).")
        letter = choice_answer(a, options)
        if a_col is not None and _text(a) is not None and letter is None:
            raise InputError(f"{where}: row {i}'s answer {_text(a)!r} (column {a_col!r}) is neither a choice "
                             f"letter A-{LETTERS[len(options) - 1]}, an option's text, nor a 0-based index.")
        out.append(Example(questions[i], letter, _text(r), options))
    return out
