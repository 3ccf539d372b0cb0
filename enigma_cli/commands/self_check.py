"""`enigma self-check`: run every core estimator on small inputs against an independent reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import core
from ..cli_options import command
from ..console import console
from ..errors import EnigmaError
from ..options import Options, opt
from ..report import FORMATS, check_format, write_table


def _checks(seed: int):
    import ot  # lazy: POT (with scipy) adds ~0.9 s to `enigma --help`

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(64, 8, generator=g, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(48, 8, generator=g, dtype=torch.float64) + 0.3, dim=-1)
    ours = float(core.entropic_ot(x, y, eps=0.1))
    ref = float(ot.solve_sample(x.numpy(), y.numpy(), reg=0.1, reg_type="KL").value)
    yield "sinkhorn: entropic OT vs POT", abs(ours - ref) / abs(ref), 1e-3

    S = torch.randn(16, 4, 4, generator=g)
    b = core.infonce_bounds(S)
    brute = np.mean([-math.log(math.exp(S[n, i, i]) / sum(math.exp(S[n, i, j]) for j in range(4)))
                     for n in range(16) for i in range(4)])
    yield "infonce: row bound vs brute force", abs(b["mi_row"] - (math.log(4) - brute)), 1e-5

    z = torch.randn(500, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 20, generator=g, dtype=torch.float64)
    yield "geometry: effective rank of a rank-3 matrix (|erank-3|/3)", abs(core.effective_rank(z) - 3) / 3, 0.5
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    yield "geometry: CKA under rotation (1-CKA)", 1 - core.linear_cka(z, 2.0 * z @ q), 1e-6

    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    adv = core.grpo_advantages(rewards, 3)
    manual = torch.cat([(r - r.mean()) / (r.std() + 1e-4) for r in rewards.view(2, 3)])
    yield "grpo: group advantages vs manual", float((adv - manual).abs().max()), 1e-6

    text = "<reasoning>\n2 + 2 = 4\n</reasoning>\n<answer>\n4\n</answer>"
    yield "format: strict layout parsed", 0.0 if core.parse_completion(text).strict else 1.0, 0.5


@dataclass(frozen=True)
class SelfCheckConfig(Options):
    seed: int = opt(0, "Seed for the random inputs.")
    out: str | None = opt(None, "Write the report here instead of stdout.", metavar="FILE", output="file")
    format: str = opt("csv", "Report format.", choices=FORMATS)


def run(cfg: SelfCheckConfig, dry_run: bool) -> None:
    check_format(cfg.format, cfg.out)
    if dry_run:
        console.print("would run the core estimators against POT and brute force (a few seconds); nothing run "
                      "(--dry-run).")
        return
    rows = [{"check": name, "error": err, "tolerance": tol, "ok": err <= tol}
            for name, err, tol in _checks(cfg.seed)]
    df = pd.DataFrame(rows)
    for r in rows:
        console.print(f"{'[green]ok[/]' if r['ok'] else '[red]FAIL[/]'}  {r['check']}  (error {r['error']:.2e})",
                      highlight=False)
    write_table(df, cfg.out, cfg.format)
    if not df["ok"].all():
        raise EnigmaError(f"{(~df['ok']).sum()} self-check(s) failed.")


self_check = command(SelfCheckConfig, "self-check", run,
                     help="Check the core library against independent references (POT, brute force) in a few "
                          "seconds.")
