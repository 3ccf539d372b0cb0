"""`enigma train` checks --ot-layers against the model's depth before any weights load (as analyze-manifold checks
--layers): a layer that does not exist failed only after the model had loaded, and --dry-run said the plan was fine."""

from __future__ import annotations

from enigma_cli.cli import main
from enigma_cli.modelfiles import depth_of


def test_a_layer_the_model_lacks_fails_the_dry_run(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", str(model_dir), "--ot-layers", "2,99", "--output-dir", str(out), "--dry-run"])
    cap = capsys.readouterr()
    assert rc == 3 and cap.out == ""
    assert "--ot-layers 99 does not exist" in cap.err and "4 layers" in cap.err
    assert not out.exists()
    rc = main(["train", "--model", str(model_dir), "--ot-layers", "2,-1", "--output-dir", str(out), "--dry-run"])
    assert rc == 0, capsys.readouterr().err


def test_depth_of_reads_the_text_config_first():
    assert depth_of({"num_hidden_layers": 4}) == 4
    assert depth_of({"n_layer": 12}) == 12
    assert depth_of({"text_config": {"num_hidden_layers": 26}, "num_hidden_layers": 2}) == 26
    assert depth_of({"hidden_size": 64}) is None and depth_of(None) is None


def test_a_run_folder_is_named_once_whatever_checks_resolve_it(model_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "earlier-run"
    shutil.copytree(model_dir, run / "checkpoint-3")
    rc = main(["train", "--model", str(run), "--ot-layers", "2", "--output-dir", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("using its newest checkpoint, checkpoint-3") == 1
