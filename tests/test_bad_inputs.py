"""Every bad input, on every command: exit code 3 (2 for a usage error), nothing on stdout, one line on stderr that
names the flag or file, and nothing written.

The table is generated from the option registry (`options.REGISTRY`), so an option added tomorrow is covered by
construction: for every int field a value below its bound and a non-integer, for every float field nan, inf and
a value below its bound, for every choice field an unknown choice, for every output path a folder where a file
is due (or a file where a folder is due) and a place under a file, and for every field a value of the wrong type
in a config file. The generated cases all fail while the options are built, so they run in milliseconds;
`--dry-run` keeps the rest fast. The hand-written cases below them cover the inputs a type cannot describe
(files, models, lengths, folders in use).
"""

from __future__ import annotations

import math
import typing
from pathlib import Path

import pytest

from enigma_cli.cli import main
from enigma_cli.cli_options import REGISTRY
from enigma_cli.options import flag_name, option_fields, spec_of, unwrap_optional

# the least each command needs to run with --dry-run (exit 0); {tmp} is the test's folder
VALID = {
    "train": ["--output-dir", "{tmp}/run"],
    "score-principles": ["--prompts", "2"],
    "analyze-manifold": ["--trained", "enigma-tiny", "--prompts", "2"],
    "evaluate": ["--prompts", "2"],
    "generate": ["What is 2 + 2?"],
    "principles-list": [],
    "principles-validate": ["{principles}"],
    "principles-from-text": [str(Path(__file__).parent / "fixtures" / "constitution.md")],
    "tasks-generate": ["--n", "2"],
    "build-default-model": ["--out", "{tmp}/model"],
    "self-check": [],
    "sft": ["--output-dir", "{tmp}/sft", "--eval-prompts", "2"],
    "study": ["--output-dir", "{tmp}/study", "--no-probe"],
}
SHIPPED_SET = Path(__file__).resolve().parents[1] / "principles" / "placebo.yaml"


def argv_of(name: str) -> list[str]:
    return name.replace("principles-", "principles ").replace("tasks-", "tasks ").split()


def valid_args(name: str, tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, principles=SHIPPED_SET) for a in VALID[name]]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_refused(rc, out, err, code, needles):
    assert rc == code, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one sentence, one line, no traceback
    assert lines[0].startswith("error: ") and lines[0].endswith("."), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- the generated table -------------------------------------------------------------------------------------------
def _bad_values(field, tp) -> list[tuple[str, object, int]]:
    """(label, command-line value, expected exit code) for one field; [] when no value is bad by type alone."""
    spec = spec_of(field)
    base, _ = unwrap_optional(tp)
    inner = typing.get_args(base)[0] if typing.get_origin(base) is tuple else base
    cases = []
    low = spec.ge if spec.ge is not None else spec.gt
    if inner is int:
        if low is not None:
            cases.append(("below its bound", str(math.ceil(low) - 1 if spec.ge is not None else int(low)), 3))
        cases.append(("not a whole number", "1.5" if typing.get_origin(base) is tuple else "abc",
                      3 if typing.get_origin(base) is tuple else 2))
    if inner is float:
        if spec.finite:
            cases += [("nan", "nan", 3), ("inf", "inf", 3), ("-inf", "-inf", 3)]
        if low is not None:
            cases.append(("below its bound", str(low - 1 if spec.ge is not None else low), 3))
        if spec.le is not None:
            cases.append(("above its bound", str(spec.le + 1), 3))
    if spec.choices:
        cases.append(("an unknown choice", "no-such-choice", 3))
    return cases


def _generated():
    for name, cls in sorted(REGISTRY.items()):
        hints = typing.get_type_hints(cls)
        for field in option_fields(cls):
            spec = spec_of(field)
            if not spec.cli or spec.argument:
                continue
            for label, value, code in _bad_values(field, hints[field.name]):
                yield pytest.param(name, field.name, value, code, id=f"{name}:{field.name}:{label}")


@pytest.mark.parametrize("name, field, value, code", list(_generated()))
def test_a_bad_flag_value_is_refused_before_any_work(name, field, value, code, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    rc, out, err = run([*argv_of(name), *valid_args(name, tmp_path), flag_name(field), value, "--dry-run"], capsys)
    assert_refused(rc, out, err, code, [flag_name(field)])
    assert files_under(tmp_path) == before


def _wrong_types():
    """A config-file value of the wrong type for every field of every command."""
    for name, cls in sorted(REGISTRY.items()):
        hints = typing.get_type_hints(cls)
        for field in option_fields(cls):
            spec = spec_of(field)
            typed = (flag_name(field.name) in VALID[name] or (spec.negative or "") in VALID[name]
                     or (spec.argument and VALID[name]))
            if typed:
                continue  # the baseline types it on the command line, and what the user types wins over the file
            base, _ = unwrap_optional(hints[field.name])
            inner = typing.get_args(base)[0] if typing.get_origin(base) is tuple else base
            wrong = {int: ["abc", "'2'", "true", "8.7"], float: ["abc", "true", ".nan"], bool: ["maybe", "1"],
                     str: ["12", "[a, [b]]"]}.get(inner, [])
            if inner is float and not spec_of(field).finite:
                wrong.remove(".nan")
            if typing.get_origin(base) is tuple and inner is int:
                wrong.remove("'2'")  # text such as "2,4" is how a list can be written
            for text in wrong:
                yield pytest.param(name, field.name, text, id=f"{name}:{field.name}={text}")


@pytest.mark.parametrize("name, field, text", list(_wrong_types()))
def test_a_config_value_of_the_wrong_type_names_the_file_and_key(name, field, text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(f"{field}: {text}\n")
    before = files_under(tmp_path)
    rc, out, err = run([*argv_of(name), *valid_args(name, tmp_path), "--config", config, "--dry-run"], capsys)
    assert_refused(rc, out, err, 3, [str(config), field])
    assert files_under(tmp_path) == before


def _output_paths():
    for name, cls in sorted(REGISTRY.items()):
        for field in option_fields(cls):
            kind = spec_of(field).output
            if kind is None:
                continue
            wrong_kind = "folder" if kind == "file" else "file"
            yield pytest.param(name, field.name, wrong_kind, id=f"{name}:{field.name}:a {wrong_kind}")
            yield pytest.param(name, field.name, "under a file", id=f"{name}:{field.name}:under a file")


@pytest.mark.parametrize("name, field, case", list(_output_paths()))
def test_an_output_path_that_cannot_be_written_is_refused(name, field, case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("keep me\n")
    target = {"folder": tmp_path / "a-folder", "file": tmp_path / "a-file",
              "under a file": tmp_path / "a-file" / "out"}[case]
    before = files_under(tmp_path)
    args = [a for a in valid_args(name, tmp_path)]
    rc, out, err = run([*argv_of(name), *args, flag_name(field), target, "--dry-run"], capsys)
    assert_refused(rc, out, err, 3, [flag_name(field), str(target)])
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_valid_baseline_of_each_command_passes(name, tmp_path, capsys, monkeypatch):
    """The cases above fail because of their one bad value, not because the baseline is wrong."""
    monkeypatch.chdir(tmp_path)
    rc, _out, err = run([*argv_of(name), *valid_args(name, tmp_path), "--dry-run"], capsys)
    assert rc == 0, err
    assert files_under(tmp_path) == {}


def test_the_table_covers_every_command_and_every_kind_of_option():
    ids = [p.id for p in _generated()] + [p.id for p in _wrong_types()] + [p.id for p in _output_paths()]
    with_options = {n for n, c in REGISTRY.items() if any(not spec_of(f).argument for f in option_fields(c))}
    assert {i.split(":")[0] for i in ids} == with_options
    for kind in ("below its bound", "nan", "an unknown choice", "not a whole number", "under a file"):
        assert any(i.endswith(kind) for i in ids), kind
    assert len(ids) > 300


# -- inputs a type cannot describe ---------------------------------------------------------------------------------
DATASET_COMMANDS = {
    "train": ["train", "--output-dir", "{tmp}/run"],
    "score-principles": ["score-principles", "--prompts", "2"],
    "evaluate": ["evaluate", "--prompts", "2"],
    "analyze-manifold": ["analyze-manifold", "--trained", "enigma-tiny", "--prompts", "2"],
}


def command_args(name: str, tmp: Path) -> list[str]:
    return [a.format(tmp=tmp) for a in DATASET_COMMANDS[name]]


@pytest.mark.parametrize("name", list(DATASET_COMMANDS))
@pytest.mark.parametrize("content, needle", [
    (b'{"question": "caf\xe9?"}\n', "is not UTF-8 text (byte 0xe9 at line 1"),
    (b"garbage, not parquet", "cannot be read as parquet"),
    (b'question,answer\n"What is 2+2?,4\n', "cannot be read as csv (Error tokenizing data"),
], ids=["non-UTF-8 JSONL", "broken parquet", "unclosed CSV quote"])
def test_an_unreadable_dataset_is_one_sentence_naming_it(name, content, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suffix = {"garbage, not parquet": ".parquet"}.get(content.decode("latin-1"), ".jsonl")
    suffix = ".csv" if content.startswith(b"question,") else suffix
    data = tmp_path / f"data{suffix}"
    data.write_bytes(content)
    before = files_under(tmp_path)
    rc, out, err = run([*command_args(name, tmp_path), "--dataset", data, "--dry-run"], capsys)
    assert_refused(rc, out, err, 3, [str(data.name), needle])
    assert files_under(tmp_path) == before


def test_a_bad_byte_far_into_a_large_file_is_located(tmp_path):
    from enigma_cli.datasets import _check_utf8
    from enigma_cli.errors import InputError

    data = tmp_path / "d.jsonl"
    line = '{"question": "é is two bytes"}\n'.encode()
    data.write_bytes(line * 50_000 + b'{"question": "\xff"}\n')  # past several 1 MiB blocks
    with pytest.raises(InputError, match=rf"line 50001, byte offset {len(line) * 50_000 + 14}\)"):
        _check_utf8(data, chunk=1 << 20)


@pytest.mark.parametrize("argv", [["score-principles", "{big}", "--dry-run"],
                                  ["train", "--principles", "{big}", "--output-dir", "{tmp}/run", "--dry-run"],
                                  ["principles", "list", "{big}"]])
def test_a_principle_file_over_the_size_limit_is_refused_before_parsing(argv, tmp_path, capsys, monkeypatch):
    import yaml

    big = tmp_path / "big.yaml"
    big.write_text("name: big\ndescription: x\nprinciples:\n" + "  - id: a\n    text: " + "x" * (2 << 20) + "\n")

    def no_parsing(*args, **kwargs):
        raise AssertionError("the oversized file was parsed")

    monkeypatch.setattr(yaml, "safe_load", no_parsing)
    rc, out, err = run([a.format(big=big, tmp=tmp_path) for a in argv], capsys)
    assert_refused(rc, out, err, 3, [str(big), "is 2.0 MiB", "at most 1 MiB"])


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("case", ["a folder", "missing"])
def test_a_config_path_that_is_not_a_file_is_named(name, case, tmp_path, capsys):
    path = tmp_path / ("conf" if case == "a folder" else "nope.yaml")
    if case == "a folder":
        path.mkdir()
    rc, out, err = run([*argv_of(name), *valid_args(name, tmp_path), "--config", path, "--dry-run"], capsys)
    assert_refused(rc, out, err, 3, [str(path), "is a folder" if case == "a folder" else "does not exist"])


@pytest.mark.parametrize("value", ["1e20", "100000000000000000000"])
def test_a_seed_out_of_range_is_a_one_line_error(value, tmp_path, capsys):
    rc, out, err = run(["train", "--seed", value, "--output-dir", tmp_path / "run", "--dry-run"], capsys)
    assert_refused(rc, out, err, 2 if "e" in value else 3, ["--seed"])


def test_usage_errors_are_one_line_too(capsys):
    for argv, needle in ((["train", "--bogus"], "No such option: --bogus"), (["trian"], "No such command 'trian'"),
                         (["train", "--steps", "abc"], "'--steps'")):
        rc, out, err = run(argv, capsys)
        assert_refused(rc, out, err, 2, [needle, "--help"])


def test_a_damaged_trained_model_is_found_before_the_base_generates(model_dir, tmp_path, capsys, monkeypatch):
    import shutil

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("enigma_cli.models.loading.load_model", no_loading)
    bad = tmp_path / "trained"
    shutil.copytree(model_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    rc, out, err = run(["analyze-manifold", "--base", model_dir, "--trained", bad, "--prompts", "2",
                        "--out-dir", tmp_path / "m"], capsys)
    assert_refused(rc, out, err, 3, [str(weights), "damaged or truncated"])
    assert not (tmp_path / "m").exists()


def test_score_refuses_an_out_whose_config_beside_it_cannot_be_written(tmp_path, capsys):
    (tmp_path / "r.csv.config.yaml").mkdir()
    rc, out, err = run(["score-principles", "--out", tmp_path / "r.csv", "--dry-run"], capsys)
    assert_refused(rc, out, err, 3, [str(tmp_path / "r.csv.config.yaml"), "is a folder"])


@pytest.mark.parametrize("name, field", [pytest.param(n, f.name, id=f"{n}:{f.name}") for n, c in sorted(REGISTRY.items())
                                         for f in option_fields(c) if spec_of(f).output])
def test_the_option_layer_itself_checks_output_paths(name, field, tmp_path):
    """Not only the commands' own early checks: building the options refuses the path, so a new command (or a
    library caller) gets the check without writing it."""
    from enigma_cli.errors import InputError
    from enigma_cli.options import construct

    cls = REGISTRY[name]
    required = {f.name: ("x",) for f in option_fields(cls) if spec_of(f).argument}
    required.update({"trained": ("x",)} if name == "analyze-manifold" else {})
    wrong = tmp_path / "a-file"
    wrong.write_text("")
    if spec_of(next(f for f in option_fields(cls) if f.name == field)).output == "file":
        wrong = tmp_path
    with pytest.raises(InputError, match=str(wrong)):
        construct(cls, {**required, field: str(wrong)})
