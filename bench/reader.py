"""Benchmark: `enigma_cli.models.reader.read` with shared prompts against padded per-row reading, on SAMI's layout.

For N synthetic questions and the first K principles of a shipped set, the model samples one completion under
each principle prompt (`generate`, the shared sampler); the critic layout then puts every principle prompt
before all K completions of its question (its own and K − 1 off-diagonal ones), K² rows per question, as the
SAMI term of training and `score-principles` read them. Three readers time the same rows, interleaved, median of
``--repeats`` after one warm-up, without gradient and with forward + backward of a loss over log-probs and pooled
states (the GRPO/SAMI/OT inputs):

- ``shared``: ``read(..., share_prompts=True)``, each distinct prompt run once per chunk;
- ``per-row``: ``read(..., share_prompts=False)``, each row running its own prompt (right-padded chunks);
- ``token_logprobs``: ``logprobs.pack`` + ``token_logprobs`` in ``length_chunks``, the training forward before
  the reader (the peer; ratios are time / this).

Agreement (no gradient): the largest |Δ| of completion-token log-probs, and of the whole next-token
log-distributions at every completion token (``at``), between each reader and the model's own unpadded forward
of each row alone.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reader.py --model enigma-tiny --k 2 4
    OMP_NUM_THREADS=1 .venv/bin/python bench/reader.py --model-config qwen2-mini --k 2 4
    OMP_NUM_THREADS=1 .venv/bin/python bench/reader.py --model smollm2 --prompts 1 --k 2 4 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from random_models import add_model_arguments, model_folder  # bench/random_models.py

from enigma_cli.datasets import load_examples
from enigma_cli.models.loading import load_model
from enigma_cli.models.logprobs import chunk_tokens, length_chunks, mean_pool, pack, token_logprobs
from enigma_cli.models.reader import read
from enigma_cli.models.rollout import encode_prompts, generate
from enigma_cli.principles import load_principle_set
from enigma_cli.prompts import render_prompt


def critic_rows(lm, k: int, n_prompts: int, max_new_tokens: int, seed: int):
    """(prompts, completions): for each question, principle i's prompt before completion j, i, j < K."""
    tok, model = lm.tokenizer, lm.model
    principles = load_principle_set("reasoning-styles").principles[:k]
    texts = [render_prompt(tok, p.text, ex.question) for ex in load_examples(None, n=n_prompts, seed=seed)
             for p in principles]
    gen = generate(model, tok, texts, num_samples=1, max_new_tokens=max_new_tokens, seed=seed)
    encoded = encode_prompts(tok, texts)
    prompts, completions = [], []
    for q in range(n_prompts):
        for i in range(k):
            for j in range(k):
                prompts.append(encoded[q * k + i])
                completions.append(gen.completion_ids[q * k + j])
    return prompts, completions


def padded(model, prompts, completions, layers, grad: bool):
    """Today's training forward: right-padded length chunks through `token_logprobs` (mean log-prob, pooled)."""
    device = next(model.parameters()).device
    seq, pooled = [], []
    with torch.enable_grad() if grad else torch.no_grad():
        for rows in length_chunks([len(p) + len(c) for p, c in zip(prompts, completions)], chunk_tokens(device)):
            batch = pack([prompts[r] for r in rows], [completions[r] for r in rows], 0).to(device)
            logp, hidden = token_logprobs(model, batch, hidden_layers=layers)
            mask = batch.completion_mask
            seq.append((logp * mask).sum(1) / mask.sum(1).clamp(min=1))
            pooled.append(mean_pool(hidden[layers[0]], mask))
    return torch.cat(seq), torch.cat(pooled)


def run(model, name: str, prompts, completions, layers, grad: bool):
    if name == "token_logprobs":
        seq, pooled = padded(model, prompts, completions, layers, grad)
    else:
        r = read(model, prompts, completions, layers=layers, grad=grad, share_prompts=name == "shared")
        seq, pooled = r.seq_logp, r.pooled[layers[0]]
    if grad:
        model.zero_grad(set_to_none=True)
        (seq.sum() + pooled.pow(2).mean()).backward()


def agreement(model, prompts, completions) -> dict[str, tuple[float, float]]:
    """max |Δ log-prob| and max |Δ log-distribution| of each reader against unpadded one-row forwards."""
    device = next(model.parameters()).device
    rows = torch.tensor([i for i, c in enumerate(completions) for _ in c])
    offsets = torch.tensor([j for c in completions for j in range(len(c))])
    with torch.no_grad():
        truth = []
        for p, c in zip(prompts, completions):
            logits = model(input_ids=torch.tensor([p + c], device=device)).logits[0, len(p) - 1 : -1]
            truth.append(torch.log_softmax(logits.double(), -1))
        dists = torch.cat(truth)
        picked = dists.gather(1, torch.tensor([t for c in completions for t in c], device=device).unsqueeze(1))[:, 0]
    out = {}
    for share in (True, False):
        r = read(model, prompts, completions, share_prompts=share, at=(rows, offsets))
        mine = r.logp[r.mask].double()
        out["shared" if share else "per-row"] = (float((mine - picked).abs().max()),
                                                 float((r.next_logprobs.double() - dists).abs().max()))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--prompts", type=int, default=4, help="questions N")
    p.add_argument("--k", type=int, nargs="+", default=[2, 4], help="principles per question (critic size)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = str(model_folder(args.model_config, tmp, args.seed)) if args.model_config else args.model
        lm = load_model(spec, device=args.device, dtype=args.dtype)
    model = lm.model.eval()
    layers = [lm.num_layers]
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"model={args.model_config or args.model} ({type(model).__name__}, N={model.num_parameters():,}, "
          f"{args.dtype}) questions={args.prompts} layer={layers[0]}; time = median of {args.repeats} after 1 "
          f"warm-up, readers interleaved; ratio = median time / token_logprobs'")
    names = ("shared", "per-row", "token_logprobs")
    for k in args.k:
        prompts, completions = critic_rows(lm, k, args.prompts, args.max_new_tokens, args.seed)
        tokens = sum(len(q) + len(c) for q, c in zip(prompts, completions))
        print(f"\nK={k}: {len(prompts)} rows, prompt tokens mean {statistics.mean(map(len, prompts)):.0f}, "
              f"completion tokens mean {statistics.mean(map(len, completions)):.0f}, {tokens} tokens in all")
        for name, (d_logp, d_dist) in agreement(model, prompts, completions).items():
            print(f"  agreement with unpadded one-row forwards, {name}: max |Δ log-prob| {d_logp:.2e}, "
                  f"max |Δ log-distribution| {d_dist:.2e}")
        print(f"  {'reader':>15} {'no grad s':>10} {'ratio':>6} {'fwd+bwd s':>10} {'ratio':>6}   (min: no grad, fwd+bwd)")
        times = {(name, grad): [] for name in names for grad in (False, True)}
        for rep in range(args.repeats + 1):
            for grad in (False, True):
                for name in names:
                    t0 = time.perf_counter()
                    run(model, name, prompts, completions, layers, grad)
                    if rep:
                        times[(name, grad)].append(time.perf_counter() - t0)
        med = {key: statistics.median(v) for key, v in times.items()}  # (min is printed after the ratios)
        for name in names:
            low = {grad: min(times[(name, grad)]) for grad in (False, True)}
            print(f"  {name:>15} {med[(name, False)]:>10.3f} {med[(name, False)] / med[('token_logprobs', False)]:>6.2f}"
                  f" {med[(name, True)]:>10.3f} {med[(name, True)] / med[('token_logprobs', True)]:>6.2f}"
                  f"   ({low[False]:.3f}, {low[True]:.3f})")


if __name__ == "__main__":
    main()
