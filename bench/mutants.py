"""Plant one-line bugs in the core and training modules and report which test catches each (issue 26 item 8).

For each mutant below (a transposed critic matrix, an off-by-one in the completion mask or the hidden-state index,
a reversed KL, a dropped debias term, a skipped RNG restore on resume, an ignored non-finite guard, ...) a copy
of the committed tree (`git archive HEAD`, never the working checkout) gets the one-line change, the training and
core test modules run with ``-x``, and the first failing test is printed. A mutant that no test catches is a test
to write. A file named ``site:PACKAGE/...`` is in an installed package (TRL's LM-head kernel, which training's
log-probs run through): the package is copied into the tree, where ``PYTHONPATH`` finds it first, and planted
there. Every mutant of this list was caught when it was written (39 of 39).

    OMP_NUM_THREADS=1 .venv/bin/python bench/mutants.py            # all, a few minutes each when uncaught
    OMP_NUM_THREADS=1 .venv/bin/python bench/mutants.py reversed-kl dropped-debias-term
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_infonce.py", "tests/test_sinkhorn.py", "tests/test_grpo.py", "tests/test_loss_pieces.py",
         "tests/test_saturated_reward.py", "tests/test_reader.py", "tests/test_tiled.py", "tests/test_objective.py",
         "tests/test_trl_trainer.py", "tests/test_train.py", "tests/test_train_options.py",
         "tests/test_run_folder.py", "tests/test_interrupt.py"]

#: (name, file, the line as it is, the line with the bug)
MUTANTS = [
    # the LM head in tiles: our side (the mask, the temperature, the row order) and TRL's kernel's tile boundaries
    ('tiled-mask-off-by-one', 'enigma_cli/models/tiled.py',
     '    return ids.to(device), (torch.arange(width) < lengths.unsqueeze(1)).to(device)',
     '    return ids.to(device), (torch.arange(width) <= lengths.unsqueeze(1)).to(device)'),
    ('tiled-temperature-ignored', 'enigma_cli/models/logprobs.py',
     'targets[mask], float(temperature), tile,',
     'targets[mask], 1.0, tile,'),
    ('tiled-rows-left-in-chunk-order', 'enigma_cli/models/tiled.py',
     '    logp = torch.cat([part[1] for part in parts])[back]',
     '    logp = torch.cat([part[1] for part in parts])'),
    ('head-vocab-tile-overlaps-the-next', 'site:trl/kernels/chunked_logprob.py',  # the forward's column tiles
     '                end = min(start + chunk_size, vocab)\n                tile = mm_buf',
     '                end = min(start + chunk_size + 1, vocab)\n                tile = mm_buf'),
    ('head-token-tile-one-short', 'site:trl/kernels/chunked_logprob.py',  # the backward's token slices
     '                token_end = min(token_start + TOKEN_CHUNK_SIZE, N)\n                n = token_end',
     '                token_end = min(token_start + TOKEN_CHUNK_SIZE - 1, N)\n                n = token_end'),
    ('logs-kept-past-the-checkpoint', 'enigma_cli/train/folder.py',
     '        self.log = MetricsLog(out / METRICS, resume_step=done)',
     '        self.log = MetricsLog(out / METRICS, resume_step=done + 1)'),
    ('completions-not-cut-back', 'enigma_cli/train/folder.py',
     '        truncate_dump(out / COMPLETIONS, done)',
     '        pass'),
    ('safe-stop-ignored', 'enigma_cli/train/folder.py',
     '        if dist_utils.all_ranks_true(not self.stop.requested):',
     '        if True:'),
    ('transposed-critic-matrix', 'enigma_cli/train/terms.py',
     'S = S.index_put((rows.to(S.device), i_idx, j_idx), off_logp.to(S.dtype))',
     'S = S.index_put((rows.to(S.device), j_idx, i_idx), off_logp.to(S.dtype))'),
    ('row-ce-over-columns', 'enigma_cli/core/infonce.py',
     '    ce_row = torch.logsumexp(S, dim=-1) - diag',
     '    ce_row = torch.logsumexp(S, dim=-2) - diag'),
    ('completion-mask-off-by-one', 'enigma_cli/models/reader.py',
     '        mask[i, : len(c)] = 1',
     '        mask[i, : len(c) - 1] = 1'),
    ('lengths-mask-off-by-one', 'enigma_cli/models/reader.py',
     '    return torch.arange(width, device=device).unsqueeze(0) < lengths.unsqueeze(1)',
     '    return torch.arange(width, device=device).unsqueeze(0) <= lengths.unsqueeze(1)'),
    ('logit-shift-off-by-one', 'enigma_cli/models/reader.py',
     '            logits = torch.cat([pre.logits[own].unsqueeze(1), out.logits[:, :-1]], dim=1)',
     '            logits = out.logits'),
    ('hidden-index-off-by-one', 'enigma_cli/models/hidden.py',
     '        resolved[layer] = layer % n_states',
     '        resolved[layer] = (layer - 1) % n_states'),
    ('trl-hidden-index-off-by-one', 'enigma_cli/trl/batch.py',
     '        captured.chunks.append({layer: states[layer] for layer in captured.layers})',
     '        captured.chunks.append({layer: states[layer - 1] for layer in captured.layers})'),
    ('trl-pool-denominator-plus-one', 'enigma_cli/models/logprobs.py',
     '    return total / weights.sum(dim=1).clamp(min=1.0)',
     '    return total / (weights.sum(dim=1) + 1.0)'),
    ('reversed-kl', 'enigma_cli/core/kl.py',
     '    diff = widen(ref_logp.detach()) - widen(logp)',
     '    diff = widen(logp) - widen(ref_logp.detach())'),
    ('dropped-debias-term', 'enigma_cli/core/sinkhorn.py',
     '    return ot_xy - 0.5 * (ot_xx + ot_yy)',
     '    return ot_xy - 0.5 * ot_xx'),
    ('skipped-rng-restore', 'enigma_cli/train/trainer.py',
     '        set_rng_state(state["rng"])',
     '        pass'),
    ('skipped-scheduler-restore', 'enigma_cli/train/trainer.py',
     '        self.scheduler.load_state_dict(state["scheduler"])',
     '        pass'),
    ('skipped-optimizer-restore', 'enigma_cli/train/trainer.py',
     '        self.optimizer.load_state_dict(state["optimizer"])',
     '        pass'),
    ('ignored-nonfinite-loss', 'enigma_cli/train/trainer.py',
     '                if not dist_utils.all_ranks_true(bool(torch.isfinite(loss))):',
     '                if False:'),
    ('ignored-nonfinite-grad', 'enigma_cli/train/trainer.py',
     '                finite = math.isfinite(grad_norm)',
     '                finite = True'),
    ('advantages-interleaved-groups', 'enigma_cli/core/grpo.py',
     '    grouped = rewards.view(-1, group_size)',
     '    grouped = rewards.view(group_size, -1).t().contiguous()'),
    ('sami-share-ignored', 'enigma_cli/train/objective.py',
     '    return Critic(scored, matrices, (hi - lo) / n, ep.off_diagonal(scored, matrices))',
     '    return Critic(scored, matrices, 1.0, ep.off_diagonal(scored, matrices))'),
    ('trl-micro-offset-ignored', 'enigma_cli/trl/trainer.py',
     'ep.n_prompts * accum, micro * ep.n_prompts)',
     'ep.n_prompts * accum, 0)'),
    ('posterior-centred-on-rows', 'enigma_cli/core/infonce.py',
     '    centred = Sb - torch.logsumexp(Sb, dim=-2, keepdim=True) + math.log(Sb.shape[-1])',
     '    centred = Sb - torch.logsumexp(Sb, dim=-1, keepdim=True) + math.log(Sb.shape[-1])'),
    ('sum-critic-scales-rows', 'enigma_cli/core/infonce.py',
     '    return S * lengths.to(S.dtype).unsqueeze(-2)',
     '    return S * lengths.to(S.dtype).unsqueeze(-1)'),
    ('ot-reference-not-normalised', 'enigma_cli/train/terms.py',
     '        y = F.normalize(reference[layer].to(device=x.device, dtype=x.dtype), dim=-1)',
     '        y = reference[layer].to(device=x.device, dtype=x.dtype)'),
    ('clip-range-swapped', 'enigma_cli/core/surrogates.py',
     '    clipped = torch.clamp(w, 1.0 - eps_low, 1.0 + eps_high)',
     '    clipped = torch.clamp(w, 1.0 - eps_high, 1.0 + eps_low)'),
    ('dr-grpo-divides-by-tokens', 'enigma_cli/core/aggregation.py',
     '    return masked.sum() / (masked.shape[0] * max_len)',
     '    return masked.sum() / mask.sum()'),
    ('sami-loss-rows-only', 'enigma_cli/core/infonce.py',
     '    loss = 0.5 * (ce_row.mean() + ce_col.mean())',
     '    loss = ce_row.mean()'),
    ('saturated-everywhere', 'enigma_cli/core/saturated.py',
     '    return (grouped.max(dim=1).values - grouped.min(dim=1).values) <= tol',
     '    return (grouped.max(dim=1).values - grouped.min(dim=1).values) >= 0'),
    ('sampler-seed-same-every-step', 'enigma_cli/train/episodes.py',
     '                   seed=(rollout.seed * 1_000_003 + step * 7_919 + rank) % 2**31)',
     '                   seed=rollout.seed % 2**31)'),
    ('ref-metrics-ignored', 'enigma_cli/train/objective.py',
     '    return cfg.beta > 0 or cfg.use_ot or cfg.ref_metrics',
     '    return cfg.beta > 0 or cfg.use_ot'),
    ('sami-diagonal-detached', 'enigma_cli/train/objective.py',
     'diag_logp if sami.on else diag_logp.detach(),',
     'diag_logp.detach(),'),
    ('ot-points-always-detached', 'enigma_cli/train/objective.py',
     '        points = {layer: (x if ot.on else x.detach()) for layer, x in policy.pooled.items()}',
     '        points = {layer: x.detach() for layer, x in policy.pooled.items()}'),
    ('sami-weight-ignored', 'enigma_cli/train/objective.py',
     '            total = total + sami.weight * l_sami',
     '            total = total + l_sami'),
    ('reader-pool-denominator-plus-one', 'enigma_cli/models/reader.py',
     '    pooled = {layer: (states[index].to(dtype) * weights).sum(1) / weights.sum(1).clamp(min=1.0)',
     '    pooled = {layer: (states[index].to(dtype) * weights).sum(1) / (weights.sum(1) + 1.0)'),
]


def committed_tree(into: Path) -> None:
    """The files of HEAD, unpacked into ``into`` (uncommitted edits of the checkout are left out)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def planted_file(tree: Path, file: str) -> Path:
    """Where a mutant plants: ``tree / file``, or for ``site:PACKAGE/...`` that file of a copy of the installed
    ``PACKAGE`` made in the tree (once), which shadows the installed one on ``PYTHONPATH``."""
    if not file.startswith("site:"):
        return tree / file
    rel = Path(file.removeprefix("site:"))
    if not (tree / rel.parts[0]).exists():
        installed = Path(importlib.util.find_spec(rel.parts[0]).origin).parent
        shutil.copytree(installed, tree / rel.parts[0], ignore=shutil.ignore_patterns("__pycache__"))
    return tree / rel


def run_mutant(tree: Path, name: str, file: str, old: str, new: str) -> tuple[bool, str]:
    """(caught, the first failing test or the summary line) for one planted bug; the file is restored after."""
    path = planted_file(tree, file)
    source = path.read_text()
    if source.count(old) != 1:
        return False, f"cannot plant: the line is not in {file} once (the code moved; update the mutant)"
    path.write_text(source.replace(old, new))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                              check=False, cwd=tree, env=env, capture_output=True, text=True)
    finally:
        path.write_text(source)
    lines = (done.stdout + done.stderr).strip().splitlines()
    failed = [line.split(" ")[1] for line in lines if line.startswith("FAILED ")]
    return done.returncode != 0, failed[0] if failed else (lines[-1] if lines else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m[0] in args.names]
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        committed_tree(tree)
        for name, file, old, new in chosen:
            caught, by = run_mutant(tree, name, file, old, new)
            missed += not caught
            print(f"{name:34} {'caught by ' if caught else 'NOT CAUGHT: '}{by}", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} planted bugs caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
