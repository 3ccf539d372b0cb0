"""`enigma train --backend trl`: TRL 1.16 options enigma passes through (issue 25): Liger's kernels, entropy
masking and the loss type no native flag names (vespo). Each reaches TRL's config; each is refused, in one
sentence and before anything loads, where it cannot work."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_bad_inputs import assert_refused  # tests/ is on sys.path (pytest's rootdir import mode)
from test_train import SMALL, train

from enigma_cli.trl.mapping import grpo_args
from enigma_cli.trl.options import TrlTrainConfig

pytestmark = [pytest.mark.filterwarnings("ignore:Sinkhorn did not converge:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def _args(tmp_path, **fields):
    cfg = TrlTrainConfig(backend="trl", output_dir=str(tmp_path / "run"), lr=1e-4, lora_r=0, **fields)
    return grpo_args(cfg, dtype=torch.float32, device=torch.device("cpu"))


def test_the_options_reach_trls_config(tmp_path):
    default = _args(tmp_path)
    assert default.use_liger_kernel is False and default.top_entropy_quantile == 1.0
    args = _args(tmp_path, top_entropy_quantile=0.2, loss_type="vespo", importance_level="token",
                 use_liger_kernel=True)
    assert args.top_entropy_quantile == 0.2
    assert args.loss_type == "vespo" and args.importance_sampling_level == "token"
    assert args.use_liger_kernel is True


def test_vespo_and_entropy_masking_train_under_trl(model_dir, tmp_path):
    out = tmp_path / "run"
    rc, _, err = train("--model", model_dir, "--steps", "1", "--backend", "trl", *SMALL, "--loss-type", "vespo",
                       "--importance-level", "token", "--top-entropy-quantile", "0.2", "--output-dir", out)
    assert rc == 0, err
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == [1] and metrics["loss"].notna().all()


@pytest.mark.parametrize("extra, needles", [
    (["--use-liger-kernel"], ["--use-liger-kernel", "--backend trl"]),
    (["--top-entropy-quantile", "0.2"], ["--top-entropy-quantile", "--backend trl"]),
    (["--loss-type", "vespo"], ["--loss-type vespo", "--backend trl"]),
    (["--backend", "trl", "--loss-type", "vespo"], ["vespo", "--importance-level token"]),
    (["--backend", "trl", "--loss-type", "vespo", "--importance-level", "token", "--surrogate", "sapo"],
     ["vespo", "--surrogate clip"]),
    (["--top-entropy-quantile", "1.5"], ["--top-entropy-quantile", "at most 1"]),
    (["--backend", "trl", "--use-liger-kernel", "--device", "cpu"], ["--use-liger-kernel"]),
])
def test_refused_in_one_sentence(extra, needles, tmp_path, capsys):
    from enigma_cli.cli import main

    rc = main(["train", "--dry-run", "--output-dir", str(tmp_path / "run"), *extra])
    cap = capsys.readouterr()
    assert_refused(rc, cap.out, cap.err, 3, needles)
    assert not (tmp_path / "run").exists()
