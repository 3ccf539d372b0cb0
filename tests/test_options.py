"""The option system: one config dataclass per command is the source of its flags, config files and checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import typer.main

from enigma_cli.cli import app, main
from enigma_cli.cli_options import REGISTRY, build
from enigma_cli.errors import InputError
from enigma_cli.options import construct, flag_name, option_fields, spec_of, to_dict
from enigma_cli.train.config import TrainConfig


def _commands() -> dict:
    """Every leaf command of the CLI, by its full name ('train', 'principles list', ...)."""
    root = typer.main.get_command(app)
    out = {}

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            full = f"{prefix}{name}"
            if hasattr(cmd, "commands"):
                walk(cmd, full + " ")
            else:
                out[full] = cmd
    walk(root, "")
    return out


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_every_command_takes_config_and_dry_run():
    commands = _commands()
    assert {"train", "score-principles", "analyze-manifold", "generate", "self-check"} <= set(commands)
    for name, cmd in commands.items():
        flags = {opt for p in cmd.params for opt in p.opts}
        assert {"--config", "--dry-run"} <= flags, f"{name} lacks --config or --dry-run"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_flags_derive_from_the_dataclass(name):
    """Each field is a flag (or argument) with the field's default and help: nothing is written twice."""
    cls = REGISTRY[name]
    cmd = _commands()[name.replace("principles-", "principles ").replace("tasks-", "tasks ")]
    params = {p.name: p for p in cmd.params}
    for field in option_fields(cls):
        spec = spec_of(field)
        if not spec.cli:
            continue
        assert field.name in params, f"{name}: field {field.name} has no flag"
        param = params[field.name]
        if not spec.argument:
            assert flag_name(field.name) in param.opts
            assert param.help == spec.help
            if not isinstance(field.default, tuple) and field.default is not None:
                assert param.default == field.default or str(param.default) == str(field.default)
    assert set(params) - {f.name for f in option_fields(cls)} == {"config", "dry_run"}


def test_help_shows_no_bool_type_for_flags(capsys):
    rc, out, _ = run(["train", "--help"], capsys)
    assert rc == 0
    assert "--no-sami" in out and "<bool>" not in out


def test_config_file_typed_flags_win_and_resolved_config_round_trips(tmp_path, capsys):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("steps: 7\nlr: 0.001\nprinciples: placebo\nsami: false\n")
    cls = TrainConfig
    cfg = build(cls, flags={"steps": 3, "lr": 3e-4}, typed={"steps"}, config_path=cfg_file, command_name="train")
    assert cfg.steps == 3 and cfg.lr == 0.001 and cfg.principles == "placebo" and cfg.sami is False
    again = tmp_path / "again.yaml"
    from enigma_cli.options import write_resolved

    write_resolved(cfg, again)
    assert build(cls, flags={}, typed=set(), config_path=again, command_name="train") == cfg


def test_sectioned_config_drives_a_pipeline(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("model: smollm2\nseed: 5\ntrain:\n  steps: 9\nscore-principles:\n  prompts: 6\n"
                    "  principles: [placebo, near-duplicate]\n")
    train = build(REGISTRY["train"], flags={}, typed=set(), config_path=path, command_name="train")
    score = build(REGISTRY["score-principles"], flags={}, typed=set(), config_path=path,
                  command_name="score-principles")
    assert (train.model, train.seed, train.steps) == ("smollm2", 5, 9)
    assert train.principles == "stepwise-vs-oneline"  # the score section's sets do not leak into train
    assert (score.model, score.seed, score.prompts) == ("smollm2", 5, 6)
    assert score.principles == ("placebo", "near-duplicate")


@pytest.mark.parametrize("text, needle", [
    ("train:\n  stepz: 3\n", "section 'train' has unknown key(s) stepz"),
    ("stepz: 3\ntrain:\n  steps: 3\n", "unknown shared key 'stepz'"),
    ("stepz: 3\n", "unknown key(s) stepz"),
    ("train: 3\n", "section 'train' must be a mapping"),
    ("- 1\n- 2\n", "must hold a mapping"),
])
def test_config_file_mistakes_name_the_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        build(TrainConfig, flags={}, typed=set(), config_path=path, command_name="train")
    assert needle in str(err.value)


@pytest.mark.parametrize("line, needle", [
    ("seed: abc", "seed must be a whole number, not 'abc'"),
    ("steps: '2'", "steps must be a whole number, not '2'"),
    ("prompts_per_step: true", "prompts_per_step must be a whole number, not True"),
    ("max_new_tokens: 8.7", "max_new_tokens must be a whole number, not 8.7"),
    ("lr: .inf", "lr must be a finite number, not inf"),
    ("lr: -1", "lr must be greater than 0"),
    ("sami: 'no'", "sami must be true or false"),
    ("model: 12", "model must be text, not 12"),
    ("seed: 100000000000000000000", "seed is out of range"),
    ("loss_type: ppo", "loss_type must be one of grpo, bnpo, dr_grpo, dapo"),
    ("ot_layers: [1, x]", "ot_layers must be a comma-separated list of whole numbers"),
])
def test_config_values_are_type_checked_before_anything_runs(tmp_path, capsys, line, needle):
    path = tmp_path / "run.yaml"
    path.write_text(line + "\n")
    rc, out, err = run(["train", "--config", path, "--output-dir", tmp_path / "out"], capsys)
    assert rc == 3 and out == ""
    assert needle in err and str(path) in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--lambda-ot", "inf"], "--lambda-ot must be a finite number"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be greater than 0"),
    (["--max-grad-norm", "0"], "--max-grad-norm must be greater than 0"),
    (["--lora-r", "-1"], "--lora-r must be at least 0"),
    (["--sampler", "fast"], "--sampler must be one of auto, shared, hf, lean"),
])
def test_flag_values_are_checked_with_one_sentence(tmp_path, capsys, argv, needle):
    rc, out, err = run(["train", *argv, "--output-dir", tmp_path / "out"], capsys)
    assert rc == 3 and out == "" and needle in err
    assert not (tmp_path / "out").exists()


def test_tuple_options_take_lists_commas_and_auto():
    assert TrainConfig(ot_layers="2,4").ot_layers == (2, 4)
    assert TrainConfig(ot_layers=["1", "3"]).ot_layers == (1, 3)
    assert TrainConfig(ot_layers="auto").ot_layers == ()
    assert TrainConfig(format_weights="1,0,0.25").format_weights == (1.0, 0.0, 0.25)


def test_construct_reports_unknown_fields_as_input_errors():
    with pytest.raises(InputError):
        construct(TrainConfig, {"stepz": 3})


def test_every_registered_config_round_trips_its_defaults():
    for name, cls in REGISTRY.items():
        required = [f for f in option_fields(cls) if spec_of(f).argument]
        values = {f.name: ("x",) for f in required}
        try:
            cfg = cls(**values)
        except InputError:
            continue  # a command whose defaults alone are incomplete (e.g. needs --trained)
        data = to_dict(cfg)
        assert set(data) == {f.name for f in dataclasses.fields(cls)}
        for key, value in data.items():
            assert not (isinstance(value, float) and math.isnan(value)), f"{name}.{key} default is NaN"
