"""Benchmark: the samplers of `enigma_cli.models.sampler` on one model and batch, and their agreement with HF.

Times ``Sampler.generate`` of each engine on the same rendered prompts (a shipped principle set's principles in
the system prompt, synthetic questions, as `enigma train` draws them): ``shared`` (each distinct prompt prefilled
once, the model's own forward and cache) and ``hf`` (``model.generate`` on left-padded rows, the peer); at
commits that still hold ``enigma_cli/models/lean.py`` (up to ab8f117), also the Llama-only ``lean`` sampler.
Engines run interleaved, one warm-up each, then ``--repeats`` timed runs; the script prints the median and the
fastest seconds, new tokens/s and the time ratios to ``hf``. ``--no-eos`` makes every row run to
``--max-new-tokens`` (equal work for every engine).

Agreement (printed before the timings): whether ``shared`` draws the very completions ``hf`` draws for the seed,
and ``--first-token N``: N one-token samples of one prompt from ``shared``, their total-variation distance to the
model's own next-token distribution (unpadded forward, the same warpers) and a χ² p-value over the tokens with an
expected count ≥ 5 (the rest pooled).

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler.py --model enigma-tiny --first-token 4000
    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler.py --model enigma-tiny --no-eos --max-new-tokens 200
    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler.py --model-config qwen2-mini --no-eos
    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler.py --model smollm2 --prompts 2 --samples 4 --repeats 1
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
from enigma_cli.models.rollout import encode_prompts
from enigma_cli.models.sampler import GenerateSampler, SharedPrefixSampler, warp
from enigma_cli.principles import load_principle_set
from enigma_cli.prompts import render_prompt


def engines(model) -> dict:
    return {"shared": SharedPrefixSampler(model), "hf": GenerateSampler(model)}


def first_token_check(model, sampler, prompt: list[int], n: int, temperature: float, top_p: float, seed: int):
    """(total variation, χ² p-value, tokens in play) of n one-token samples against the model's distribution."""
    from scipy.stats import chi2

    out = sampler.generate([prompt], num_samples=n, max_new_tokens=1, temperature=temperature, top_p=top_p,
                           seed=seed, eos_ids=[], pad_id=0)
    tokens = torch.tensor([c[0] for c in out.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt], device=next(model.parameters()).device)).logits[:, -1]
    probs = warp(logits, temperature, top_p).softmax(-1)[0].double().cpu()
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    tv = 0.5 * float((counts / n - probs).abs().sum())
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return tv, float(chi2.sf(stat, int(keep.sum()) - 1)), int(big.sum())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=8, help="completions per prompt G")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--no-eos", action="store_true", help="never stop early: every row makes max-new-tokens")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--first-token", type=int, default=0, help="samples for the first-token distribution check")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        spec = str(model_folder(args.model_config, tmp, args.seed)) if args.model_config else args.model
        lm = load_model(spec, device=args.device, dtype=args.dtype)
    model, tok = lm.model.eval(), lm.tokenizer
    pset = load_principle_set("reasoning-styles")
    examples = load_examples(None, n=args.prompts, seed=args.seed)
    texts = [render_prompt(tok, pset.principles[i % pset.k].text, ex.question) for i, ex in enumerate(examples)]
    prompts = encode_prompts(tok, texts)
    eos = [] if args.no_eos else [tok.eos_token_id]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    kwargs = {"num_samples": args.samples, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
              "top_p": args.top_p, "eos_ids": eos, "pad_id": pad}
    runners = engines(model)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"model={args.model_config or args.model} ({type(model).__name__}, N={model.num_parameters():,}, "
          f"{args.dtype}) prompts={args.prompts} (lengths {[len(q) for q in prompts]}) G={args.samples} "
          f"max_new_tokens={args.max_new_tokens} eos={'off' if args.no_eos else 'on'} T={args.temperature} "
          f"top_p={args.top_p}; {args.repeats} timed runs per engine after 1 warm-up, interleaved")

    same = runners["shared"].generate(prompts, seed=args.seed, **kwargs)
    peer = runners["hf"].generate(prompts, seed=args.seed, **kwargs)
    equal = sum(a == b for a, b in zip(same.completion_ids, peer.completion_ids))
    print(f"shared vs hf, seed {args.seed}: {equal}/{len(peer.completion_ids)} completions identical")
    if args.first_token:
        tv, pval, big = first_token_check(model, runners["shared"], prompts[0], args.first_token,
                                          args.temperature, args.top_p, args.seed)
        print(f"first token, {args.first_token} samples of shared: total variation {tv:.4f} to the model's "
              f"distribution, chi2 p = {pval:.3f} over {big} tokens with expected count >= 5 (+1 pooled bin)")

    times: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, int] = {}
    for rep in range(args.repeats + 1):
        for name, sampler in runners.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = sampler.generate(prompts, seed=args.seed + rep, **kwargs)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - t0)
                tokens[name] = tokens.get(name, 0) + sum(len(c) for c in out.completion_ids)
    base, base_min = statistics.median(times["hf"]), min(times["hf"])
    header = f"{'engine':>8} {'median s':>9} {'min s':>8} {'new tok/s':>10} {'median / hf':>12} {'min / hf':>9}"
    print(header)
    print("-" * len(header))
    for name in runners:
        t, fastest = statistics.median(times[name]), min(times[name])
        print(f"{name:>8} {t:>9.3f} {fastest:>8.3f} {tokens[name] / sum(times[name]):>10.1f} {t / base:>12.2f} "
              f"{fastest / base_min:>9.2f}")


if __name__ == "__main__":
    main()
