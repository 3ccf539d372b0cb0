"""`enigma principles from-text`: a constitution in Markdown or plain text becomes a valid principle set."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from clirun import refused

from enigma_cli.cli import main
from enigma_cli.constitution import build_sets, parse_rules, stable_ids
from enigma_cli.principles import read_principle_file

FIXTURE = Path(__file__).parent / "fixtures" / "constitution.md"


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_fixture_gives_twenty_rules_in_their_own_words():
    rules = parse_rules(FIXTURE.read_text())
    assert len(rules) == 20
    assert [r.heading for r in rules[::5]] == ["Honesty", "Working", "Tone", "Safety"]
    # a wrapped rule is one rule, its line break a space; the introduction and the closing line are not rules
    assert rules[2].text == "Correct a mistake of your own as soon as you notice it, even when nobody asked."
    assert rules[2].line == 9
    assert not any("introduction" in r.text or "twenty rules" in r.text for r in rules)
    assert rules[15].text == "Refuse to help with cheating on a graded exam."  # "1)" numbering


def test_ids_are_stable_when_a_rule_is_added():
    text = FIXTURE.read_text()
    before = dict(zip((r.text for r in parse_rules(text)), stable_ids(parse_rules(text))))
    grown = text.replace("## Honesty\n\n", "## Honesty\n\n1. Start with the answer in one sentence.\n")
    after = dict(zip((r.text for r in parse_rules(grown)), stable_ids(parse_rules(grown))))
    assert {t: after[t] for t in before} == before
    assert stable_ids(parse_rules("- Be kind to all.\n- Be kind to all of them.\n")) == ["be-kind-to-all",
                                                                                       "be-kind-to-all-of"]


def test_plain_text_paragraphs_and_nested_items():
    rules = parse_rules("Answer only what was asked.\n\nShow the working\nfor every step.\n")
    assert [r.text for r in rules] == ["Answer only what was asked.", "Show the working for every step."]
    nested = parse_rules("- Be exact:\n  - round at the end\n- Be brief.\n")
    assert [r.text for r in nested] == ["Be exact: round at the end", "Be brief."]


def test_prints_a_valid_set(tmp_path, capsys):
    rc, out, err = run(["principles", "from-text", FIXTURE], capsys)
    assert rc == 0, err
    path = tmp_path / "set.yaml"
    path.write_text(out)
    pset = read_principle_file(path)
    assert pset.name == "constitution" and pset.k == 20
    assert pset.texts == tuple(r.text for r in parse_rules(FIXTURE.read_text()))
    assert "enigma-tiny cannot read 19 of 20 rules" in err  # readability for the default model, on stderr


def test_score_principles_reads_it_from_a_pipe(tmp_path):
    enigma = Path(sys.executable).with_name("enigma")
    pipe = (f"{enigma} principles from-text {FIXTURE} | {enigma} score-principles /dev/stdin --prompts 2 "
            "--samples 1 --max-new-tokens 16 --device cpu")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    (row,) = pd.read_csv(io.StringIO(done.stdout)).to_dict("records")
    assert row["set"] == "constitution" and row["k"] == 20
    assert 0 <= row["si"] <= 1 and not row["trusted"]  # enigma-tiny cannot read these rules, and says so


def test_sets_by_heading_gives_one_set_per_section_and_a_pool(tmp_path, capsys):
    out = tmp_path / "sets"
    rc, stdout, err = run(["principles", "from-text", FIXTURE, "--sets-by-heading", "--out", out], capsys)
    assert rc == 0, err
    assert stdout == ""
    sets = {p.stem: read_principle_file(p) for p in out.glob("*.yaml")}
    assert sorted(sets) == ["constitution.honesty", "constitution.safety", "constitution.tone",
                            "constitution.working"]
    assert all(s.k == 5 for s in sets.values())
    rc, _, err = run(["score-principles", "--pool", out, "--choose", 2, "--prompts", 2, "--dry-run"], capsys)
    assert rc == 0, err  # the folder is a pool: ids are unique across the document


def test_near_duplicates_are_named(tmp_path, capsys):
    doc = tmp_path / "c.md"
    doc.write_text("- Show every step on its own line.\n- Show every step on its own line!\n- Be brief.\n")
    rc, _, err = run(["principles", "from-text", doc], capsys)
    assert rc == 0, err
    assert "show-every-step-on-its" in err and "nearly the same text" in err


@pytest.mark.parametrize("doc, extra, needles", [
    (None, [], ["missing.md", "does not exist"]),
    ("- Only one rule here.\n", [], ["found 1 rule", "at least 2"]),
    ("- Be brief.\n- Be exact.\n- Be brief.\n", [], ["lines 1 and 3", "same text"]),
    ("# A\n- Be brief.\n- Be exact.\n# B\n- Be kind.\n", ["--sets-by-heading", "--out", "{tmp}/sets"],
     ["heading 'B'", "line 5"]),
    ("- Be brief.\n- Be exact.\n", ["--sets-by-heading"], ["--sets-by-heading", "--out DIR"]),
    ("- Be brief.\n- Be exact.\n", ["--name", "bad name"], ["--name"]),
    ("- Be brief.\n- " + "Count every apple twice. " * 400 + "\n", [], ["cannot fit", "positions of enigma-tiny"]),
])
def test_bad_input_exits_3_and_writes_nothing(doc, extra, needles, tmp_path, capsys):
    path = tmp_path / ("missing.md" if doc is None else "c.md")
    if doc is not None:
        path.write_text(doc)
    before = sorted(tmp_path.iterdir())
    rc, out, err = run(["principles", "from-text", path, "--out", tmp_path / "set.yaml",
                        *[a.format(tmp=tmp_path) for a in extra]] if "--out" not in extra and "--sets-by-heading"
                       not in extra else ["principles", "from-text", path, *[a.format(tmp=tmp_path) for a in extra]],
                       capsys)
    refused(rc, out, err, *needles)
    assert sorted(tmp_path.iterdir()) == before


def test_build_sets_checks_the_schema():
    rules = parse_rules("- Be brief.\n- Be exact.\n")
    (pset,) = build_sets(rules, Path("x.md"), "x", by_heading=False)
    assert pset.ids == ("be-brief", "be-exact") and pset.description == "2 rules from x.md."
