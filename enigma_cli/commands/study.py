"""`enigma study`: does pre-training SI predict steadier training and a gain over GRPO-only? One command."""

from __future__ import annotations

from ..cli_options import command
from ..report import write_table
from ..study.config import StudyConfig


def run(cfg: StudyConfig, dry_run: bool) -> None:
    # lazy: the study modules bring scipy and the training loop, ~0.5 s more on `enigma --help`
    from ..study.pipeline import run_study

    sets = run_study(cfg, dry_run)
    if sets is not None:
        write_table(sets, None, "csv")


study = command(StudyConfig, "study", run,
                help="Test the paper's claim on your model: score every principle set, train each set × variant × "
                     "seed, evaluate, and report whether pre-training SI predicts the outcomes (resumable, "
                     "shardable).",
                dry_run_help="Validate everything and print the planned work, writing nothing in the study folder; "
                             "unless --no-probe, it loads the model and times 2 training steps in a temporary folder "
                             "to estimate the wall time.")
