"""The principle-set schema, its loader's errors, the shipped sets and `enigma principles list|validate`."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from enigma_cli.cli import main
from enigma_cli.errors import InputError
from enigma_cli.principles import (
    Principle,
    PrincipleSet,
    load_principle_set,
    read_principle_file,
    resolve_sets,
    shipped_set_paths,
    shipped_sets,
)

GOOD = """\
name: demo
description: A test set.
principles:
  - id: a
    text: Show every step.
    antithesis: Hide the steps.
  - id: b
    text: Keep it to one line.
"""


def flat(text: str) -> str:
    """Rich wraps long lines on a narrow terminal: compare with whitespace collapsed."""
    return " ".join(text.split())


def write(tmp_path: Path, text: str, name: str = "set.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- loader


def test_good_file_loads(tmp_path):
    ps = read_principle_file(write(tmp_path, GOOD))
    assert isinstance(ps, PrincipleSet)
    assert ps.name == "demo" and ps.k == 2 and ps.ids == ("a", "b")
    assert ps.principles[0] == Principle("a", "Show every step.", "Hide the steps.")
    assert ps.principles[1].antithesis is None
    assert ps.path == tmp_path / "set.yaml"
    assert load_principle_set(str(tmp_path / "set.yaml")) == ps
    assert load_principle_set(tmp_path / "set.yaml") == ps


BAD = {
    "unknown top-level key": (GOOD + "author: me\n", "author"),
    "unknown principle key": (GOOD.replace("    antithesis: Hide the steps.\n", "    note: x\n"),
                              "principles[0].note"),
    "duplicate id": (GOOD.replace("id: b", "id: a"), "principles[1].id"),
    "empty text": (GOOD.replace("text: Keep it to one line.", 'text: ""'), "principles[1].text"),
    "null text": (GOOD.replace("text: Keep it to one line.", "text:"), "principles[1].text"),
    "missing text": (GOOD.replace("    text: Keep it to one line.\n", ""), "principles[1].text"),
    "duplicate text": (GOOD.replace("Keep it to one line.", "show  every STEP."), "principles[1].text"),
    "one principle (K < 2)": (GOOD.split("  - id: b")[0], "principles"),
    "no principles": ("name: demo\ndescription: d\nprinciples: []\n", "principles"),
    "principles not a list": ("name: demo\ndescription: d\nprinciples: {a: 1}\n", "principles"),
    "missing name": (GOOD.replace("name: demo\n", ""), "name"),
    "missing description": (GOOD.replace("description: A test set.\n", ""), "description"),
    "bad id characters": (GOOD.replace("id: a", "id: 'a b'"), "principles[0].id"),
    "text is a list": (GOOD.replace("text: Show every step.", "text: [x]"), "principles[0].text"),
    "principle not a mapping": (GOOD.replace("  - id: b\n    text: Keep it to one line.\n", "  - just text\n"),
                                "principles[1]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_name_file_and_field(tmp_path, case):
    text, field = BAD[case]
    path = write(tmp_path, text, "bad-set.yaml")
    with pytest.raises(InputError) as info:
        load_principle_set(path)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert "bad-set.yaml" in message, message
    assert f"'{field}'" in message, message
    assert message.count("\n") == 0


@pytest.mark.parametrize("text, words", [
    ("name: [unclosed\n", "not valid YAML"),
    ("", "empty"),
    ("   \n# only a comment\n", "empty"),
    ("- a\n- b\n", "mapping"),
])
def test_unparseable_files(tmp_path, text, words):
    path = write(tmp_path, text, "broken.yaml")
    with pytest.raises(InputError, match=words) as info:
        load_principle_set(path)
    assert "broken.yaml" in str(info.value)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(InputError, match="does not exist") as info:
        load_principle_set(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)
    with pytest.raises(InputError, match="no principle set named 'nope'"):
        load_principle_set("nope")
    with pytest.raises(InputError, match="folder"):
        read_principle_file(tmp_path)


# ----------------------------------------------------------------------------------------- shipped sets


def test_shipped_sets_validate_and_cover_the_controls():
    sets = shipped_sets()
    names = [s.name for s in sets]
    assert len(sets) >= 6 and len(set(names)) == len(names)
    assert {"placebo", "near-duplicate"} <= set(names)
    for ps, path in zip(sets, shipped_set_paths()):
        assert ps.k >= 2 and ps.description
        assert path.stem == ps.name  # a set is found by its file name and by its name alike
        assert load_principle_set(ps.name) == ps
    assert sorted({s.k for s in sets}) == [2, 4]  # every K has several sets to compare (SI only at equal K)


def test_a_shipped_id_means_the_same_principle_everywhere():
    seen: dict[str, Principle] = {}
    for ps in shipped_sets():
        for p in ps.principles:
            assert seen.setdefault(p.id, p) == p, p.id


def test_shipped_texts_are_short():
    for ps in shipped_sets():
        for p in ps.principles:
            assert len(p.text) <= 80, p.text  # the built-in model reads them in a small context


def test_resolve_sets(tmp_path):
    assert [s.name for s in resolve_sets(None)] == [s.name for s in shipped_sets()]
    assert [s.name for s in resolve_sets([])] == [s.name for s in shipped_sets()]
    write(tmp_path, GOOD, "one.yaml")
    write(tmp_path, GOOD.replace("name: demo", "name: demo2"), "two.yaml")
    got = resolve_sets(["placebo", str(tmp_path / "one.yaml")])
    assert [s.name for s in got] == ["placebo", "demo"]
    assert [s.name for s in resolve_sets([str(tmp_path)])] == ["demo", "demo2"]
    with pytest.raises(InputError, match="two principle sets are named 'demo'"):
        resolve_sets([str(tmp_path / "one.yaml"), str(tmp_path / "one.yaml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .yaml files"):
        resolve_sets([str(tmp_path / "empty")])


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_list_writes_only_csv_to_stdout(capsys):
    assert main(["principles", "list"]) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(io.StringIO(out))
    assert list(df.columns) == ["set", "k", "id", "text", "antithesis", "file"]
    assert len(df) == sum(s.k for s in shipped_sets())
    assert set(df["set"]) == {s.name for s in shipped_sets()}
    assert (df.groupby("set")["k"].first() == df.groupby("set").size()).all()


def test_cli_list_jsonl_and_named_set(capsys):
    assert main(["principles", "list", "placebo", "--format", "jsonl"]) == 0
    df = pd.read_json(io.StringIO(capsys.readouterr().out), lines=True)
    assert list(df["id"]) == list(load_principle_set("placebo").ids)


def test_cli_list_bad_input_exits_3_with_empty_stdout(tmp_path, capsys):
    bad = write(tmp_path, GOOD.replace("id: b", "id: a"), "dup.yaml")
    assert main(["principles", "list", str(bad)]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "dup.yaml" in flat(captured.err) and "principles[1].id" in flat(captured.err)


def test_cli_validate(tmp_path, capsys):
    good = write(tmp_path, GOOD, "good.yaml")
    assert main(["principles", "validate", str(good), *map(str, shipped_set_paths())]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and flat(captured.err).count("ok:") == 1 + len(shipped_set_paths())

    bad1 = write(tmp_path, GOOD + "extra: 1\n", "bad1.yaml")
    bad2 = write(tmp_path, GOOD.split("  - id: b")[0], "bad2.yaml")
    assert main(["principles", "validate", str(good), str(bad1), str(bad2), str(tmp_path / "gone.yaml")]) == 3
    captured = capsys.readouterr()
    err = flat(captured.err)
    assert captured.out == ""
    assert err.count("ok:") == 1 and err.count("error:") == 3
    assert "bad1.yaml" in err and "'extra'" in err
    assert "bad2.yaml" in err and "at least 2" in err
    assert "gone.yaml" in err and "does not exist" in err


def test_cli_tasks_generate(tmp_path, capsys):
    out = tmp_path / "tasks.jsonl"
    assert main(["tasks", "generate", "--n", "20", "--seed", "1", "--out", str(out)]) == 0
    rows = pd.read_json(out, lines=True)
    assert len(rows) == 20
    assert {"question", "answer", "principle_id", "principle_text", "completion"} <= set(rows.columns)
    assert main(["tasks", "generate", "--n", "3", "--plain"]) == 0
    plain = pd.read_json(io.StringIO(capsys.readouterr().out), lines=True)
    assert list(plain.columns) == ["question", "answer"] and len(plain) == 3
    assert main(["tasks", "generate", "--n", "0"]) == 3
    assert main(["tasks", "generate", "--split", "test"]) == 3
