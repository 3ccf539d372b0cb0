"""Benchmark: enigma's GRPO step (true GRPO-only and full ENIGMA) against TRL's, sampler throughput, ENIGMA's cost.

Three tables per model, every figure measured in this run:

1. **Step.** enigma's *true* GRPO-only step (no reference copy, no reference pass, no critic logging:
   `--no-sami --no-ot --no-ref-metrics --no-critic-metrics`), full ENIGMA (`enigma train`'s defaults), and TRL's
   ``GRPOTrainer`` with gradient checkpointing ON (its ``GRPOConfig`` default) and OFF, each labelled; with
   ``--gradient-checkpointing`` also enigma's two rows with it on. Both sides train a fresh copy of the same
   weights on the same rendered prompts, G, max completion length, sampling (temperature 1, no top-k/top-p),
   loss type "grpo", β = 0, one update per generation and the format reward. Columns: s/step (median), generated
   tok/s over the whole step, update tok/s (prompt + completion tokens through the update's forward and backward,
   over the update's own time: for TRL the step minus `_generate_and_score_completions`), MFU =
   6·N·(update tok/s) / peak, and the step time over enigma's true GRPO-only step.
2. **Generation.** tokens/s of `rollout.generate` for every engine it offers (`rollout.ENGINES`, "auto" aside: a
   new engine shows up here by itself), and of vLLM when it is installed and the device is a GPU (else "skipped").
3. **ENIGMA's extra** over the true GRPO-only step, phase by phase (the reference pass, the update, and inside the
   update the Sinkhorn solves; the rest of the update's extra is SAMI's off-diagonal rows and the hidden states).
   enigma's variants step on the *same* completions (one generation per step, shared; `enigma_paired`), so the
   extra is measured on identical work, and in alternating order, so other load on the machine hits all alike.

``--autocast`` (mixed precision, issue 27): every enigma variant twice, in ``--dtype`` (float32 by default) and in
``bf16-mixed`` (the same float32 weights, forwards under bf16 autocast), stepping on the same episodes; each
variant also samples its own episodes in its own precision, timed, for its generation figures (the update steps
on the shared ones, so the update figures compare identical work). TRL runs with ``bf16=True`` (its CPU autocast)
too, and the generation table has one column per precision, the two timed in alternation. A last table gives the
bf16-mixed / float32 ratios (median of per-step ratios).

Times are the CPU time of this process on a CPU (a shared machine's other jobs then move them far less than wall
time; ``--wall`` for wall time) and wall time on a GPU (synchronised).

Differences that remain: enigma gives each prompt's G completions to K principles (G/K each), TRL samples G
completions from one rendered prompt (its first principle); the completions differ (sampling), hence tokens/s.
``--model-config`` takes presets of `bench/random_models.py` (comma-separated to run several) for random weights
of a real shape; ``--model`` an enigma model spec (enigma-tiny by default).

    OMP_NUM_THREADS=1 .venv/bin/python bench/grpo_step.py --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python bench/grpo_step.py --principles reasoning-styles -K 4 --skip-trl
    .venv/bin/python bench/grpo_step.py --device cuda --dtype bfloat16 --model-config smollm2-135m,llama-1b
    OMP_NUM_THREADS=1 .venv/bin/python bench/grpo_step.py --autocast --skip-trl --model-config qwen2-mini
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch
from random_models import model_folder, peak_tflops  # bench/random_models.py

from enigma_cli.core import format_reward
from enigma_cli.models import rollout
from enigma_cli.models.loading import load_model
from enigma_cli.prompts import render_prompt
from enigma_cli.train import terms
from enigma_cli.train.config import TrainConfig
from enigma_cli.train.defaults import for_model
from enigma_cli.train.objective import sami_matrices, sami_prompts
from enigma_cli.train.run import plan

TRUE_GRPO = {"sami": False, "ot": False, "ref_metrics": False, "critic_metrics": False}


def update_tokens(ep, cfg) -> int:
    """Prompt + completion tokens of every sequence the update forwards (the diagonal, plus SAMI's off-diagonal)."""
    n = sum(len(ep.prompt_ids[ep.prompt_of(i)]) + len(c) for i, c in enumerate(ep.completion_ids))
    if cfg.use_sami:
        for p, s, i, j in ep.off_diagonal(range(sami_prompts(cfg.sami_prompts, ep.n_prompts)),
                                         sami_matrices(cfg.sami_matrices, ep.m)):
            n += len(ep.prompt_ids[p * ep.k + i]) + len(ep.completion_ids[ep.completion_index(p, j, s)])
    return n


#: The mixed-precision ``--dtype`` that ``--autocast`` sets beside ``--dtype``.
MIXED = "bf16-mixed"


def _config(args, model_dir, out_dir: str, dtype: str | None = None, **options) -> TrainConfig:
    return TrainConfig(model=str(model_dir), principles=args.principles, principles_per_prompt=args.k,
                       steps=args.repeats + 1, prompts_per_step=args.prompts, group_size=args.group_size,
                       max_new_tokens=args.max_new_tokens, temperature=1.0, loss_type="grpo", beta=0.0,
                       updates_per_generation=1, device=args.device, dtype=dtype or args.dtype, output_dir=out_dir,
                       seed=args.seed, **options)


#: The clock of every figure: CPU time of this process on a CPU (other jobs on a shared machine then slow the
#: figures far less than wall time), wall time on a GPU (`main` chooses; ``--wall`` forces wall time).
CLOCK = time.perf_counter


def _timed(fn, device: str, acc: dict, key: str):
    """``fn`` adding its (synchronised) time to ``acc[key]``."""
    def wrapper(*a, **k):
        _sync(device)
        t0 = CLOCK()
        out = fn(*a, **k)
        _sync(device)
        acc[key] = acc.get(key, 0.0) + CLOCK() - t0
        return out
    return wrapper


def enigma_paired(args, model_dir, tmp: str, variants: list[tuple[str, dict]]) -> dict[str, dict[str, list[float]]]:
    """Every variant's trainer (same starting weights) steps on the *same* episodes, generated once per step.

    The generation is shared, so a variant's extra cost is its reference pass and update on identical
    completions, not a difference of sampled lengths; the variants run in alternating order, so load from other
    processes falls on all of them alike. Per timed step: each phase's seconds (generation, the reference pass
    "scoring", the update, the Sinkhorn solves inside it), generated and updated tokens. A variant's options may
    name its own ``dtype``; with ``--autocast`` each variant also samples (and times) its own episodes.
    """
    from enigma_cli.train import trainer as trainer_mod

    trainers, cfgs = {}, {}
    for n, (label, options) in enumerate(variants):
        cfgs[label] = _config(args, model_dir, f"{tmp}/v{n}", **options)
        pset, examples = plan(cfgs[label])
        lm = load_model(str(model_dir), device=args.device, dtype=cfgs[label].dtype, for_training=True)
        cfgs[label] = for_model(cfgs[label], lm.model)
        trainers[label] = trainer_mod.Trainer(lm, examples, pset, cfgs[label])
    shared: dict = {}
    acc: dict[str, float] = {}
    real = (trainer_mod.collect, trainer_mod.reference_pass, terms.sinkhorn_divergence)
    generate = _timed(real[0], args.device, acc, "generation")

    def collect(*a, **k):
        if "ep" not in shared or args.autocast:
            ep = generate(*a, **k)  # timed into this variant's acc
            shared["own_tokens"] = sum(map(len, ep.completion_ids))
            if "ep" not in shared:
                shared["ep"], shared["generation"] = ep, acc["generation"]
        return shared["ep"]

    trainer_mod.collect = collect
    trainer_mod.reference_pass = _timed(real[1], args.device, acc, "scoring")
    terms.sinkhorn_divergence = _timed(real[2], args.device, acc, "sinkhorn")
    recs: dict[str, dict[str, list[float]]] = {label: {} for label, _ in variants}
    try:
        for i in range(args.repeats + 1):
            shared.clear()
            order = list(trainers) if i % 2 == 0 else list(reversed(trainers))
            for label in order:
                acc.clear()
                step = _timed(trainers[label].step, args.device, acc, "step")
                step()
                if i:  # the first step is the warm-up
                    ep = shared["ep"]
                    own = acc["step"] - acc.get("generation", 0.0)  # this variant's reference pass and update
                    # --autocast: the variant's own sampling (its precision); else the shared one's
                    gen, gen_tokens = ((acc["generation"], shared["own_tokens"]) if args.autocast else
                                       (shared["generation"], sum(map(len, ep.completion_ids))))
                    values = {"generation": gen, "scoring": acc.get("scoring", 0.0),
                              "update": own - acc.get("scoring", 0.0), "sinkhorn": acc.get("sinkhorn", 0.0),
                              "step": gen + own, "gen_tokens": gen_tokens, "upd_tokens": update_tokens(ep, cfgs[label])}
                    for key, value in values.items():
                        recs[label].setdefault(key, []).append(float(value))
    finally:
        trainer_mod.collect, trainer_mod.reference_pass, terms.sinkhorn_divergence = real
        trainers.clear()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return recs


def trl_run(args, model_dir, out_dir: str, gradient_checkpointing: bool, beta: float = 0.0,
            autocast: bool = False) -> dict[str, list[float]]:
    """TRL's GRPOTrainer on the same model and prompts; the update is the step minus generation and scoring.

    ``beta > 0`` makes TRL hold a reference model (a full copy) and run its reference pass, as ENIGMA does.
    ``autocast``: ``bf16=True`` on float32 weights (accelerate's bf16 autocast around the model's forward)."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    lm = load_model(str(model_dir), device=args.device, dtype=args.dtype, for_training=True)
    if not autocast:  # TRL's own forwards are not marked; this keeps enigma's from autocasting under auto too
        from enigma_cli.models.precision import mark

        mark(lm.model, None)
    dataset = Dataset.from_dict({"prompt": trl_prompts(args, model_dir, lm.tokenizer)})
    if beta > 0 and not Path(lm.model.config._name_or_path).is_dir():
        # TRL loads its reference from the config's name, a hub id for an alias such as smollm2 (offline here)
        lm.model.save_pretrained(Path(out_dir) / "reference")
        lm.model.config._name_or_path = str(Path(out_dir) / "reference")

    def reward(completions, **kwargs):
        return format_reward(list(completions))[0].tolist()

    conf = GRPOConfig(output_dir=out_dir, use_cpu=args.device == "cpu", report_to="none", save_strategy="no",
                      logging_strategy="no", max_steps=args.repeats + 1, learning_rate=3e-4,
                      per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
                      max_completion_length=args.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                      loss_type="grpo", beta=beta, num_iterations=1, epsilon=0.2, scale_rewards="group",
                      max_grad_norm=1.0, seed=args.seed, dataloader_num_workers=0, disable_tqdm=True,
                      shuffle_dataset=False, gradient_checkpointing=gradient_checkpointing,
                      # TRL defaults to bf16=True, which on a CPU means bf16 autocast: keep both sides at --dtype
                      bf16=autocast or args.dtype == "bfloat16", fp16=args.dtype == "float16")
    trainer = GRPOTrainer(model=lm.model, reward_funcs=reward, args=conf, train_dataset=dataset,
                          processing_class=lm.tokenizer)
    marks: list[float] = []
    rec: dict[str, list[float]] = {"gen_tokens": [], "upd_tokens": [], "generation": []}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            _sync(args.device)
            marks.append(CLOCK())

        def on_step_end(self, a, state, control, **kw):
            _sync(args.device)
            marks.append(CLOCK())

    trainer.add_callback(Clock())
    trainer.remove_callback(PrinterCallback)  # its end-of-training summary would interleave with our tables
    orig = trainer._generate_and_score_completions

    def spy(inputs):
        _sync(args.device)
        t0 = CLOCK()
        out = orig(inputs)
        _sync(args.device)
        rec["generation"].append(CLOCK() - t0)
        rec["gen_tokens"].append(float(out["completion_mask"].sum()))
        rec["upd_tokens"].append(float(out["completion_mask"].sum() + out["prompt_mask"].sum()))
        return out

    trainer._generate_and_score_completions = spy
    trainer.train()
    steps = [marks[2 * i + 1] - marks[2 * i] for i in range(len(marks) // 2)][1:]
    n = len(steps)
    rec = {key: values[1:n + 1] for key, values in rec.items()}
    rec["step"] = steps
    rec["update"] = [s - g for s, g in zip(steps, rec["generation"])]
    return rec


def trl_prompts(args, model_dir, tok) -> list[str]:
    """The rendered prompts of enigma's draw, one per prompt (its first principle)."""
    cfg = _config(args, model_dir, "unused")
    pset, examples = plan(cfg)
    n = args.prompts * (args.repeats + 1)
    return [render_prompt(tok, pset.principles[i % pset.k].text, examples[i % len(examples)].question)
            for i in range(n)]


def generation_rates(args, model_dir) -> list[tuple[str, str]]:
    """(engine, tokens/s or why not) for every engine of `rollout.generate`, then vLLM. With ``--autocast`` the
    rate is given in ``--dtype`` and in bf16-mixed, the two timed in alternation on the same prompts and seeds,
    with their ratio (same-run)."""
    dtypes = [args.dtype, MIXED] if args.autocast else [args.dtype]
    lms = [load_model(str(model_dir), device=args.device, dtype=d) for d in dtypes]
    prompts = trl_prompts(args, model_dir, lms[0].tokenizer)[: args.prompts]
    out = []
    for engine in [e for e in rollout.ENGINES if e != "auto"]:
        try:
            times, tokens = [[] for _ in lms], [[] for _ in lms]
            for i in range(args.repeats + 1):
                for n in (range(len(lms)) if i % 2 == 0 else reversed(range(len(lms)))):
                    _sync(args.device)
                    t0 = CLOCK()
                    gen = rollout.generate(lms[n].model, lms[n].tokenizer, prompts, num_samples=args.group_size,
                                           max_new_tokens=args.max_new_tokens, temperature=1.0,
                                           seed=args.seed + i, engine=engine)
                    _sync(args.device)
                    if i:
                        times[n].append(CLOCK() - t0)
                        tokens[n].append(gen.num_new_tokens)
            rates = [sum(k) / sum(t) for k, t in zip(tokens, times)]
            text = "  ".join(f"{d} {r:.1f}" for d, r in zip(dtypes, rates))
            if len(rates) == 2:
                text += f"  ratio {rates[1] / rates[0]:.2f}"
            out.append((engine, text))
        except ValueError as err:  # an engine that cannot run this model
            out.append((engine, f"skipped ({err})"))
    out.append(("vllm", vllm_rate(args, model_dir, prompts)))
    return out


def vllm_rate(args, model_dir, prompts: list[str]) -> str:
    if importlib.util.find_spec("vllm") is None:
        return "skipped (vllm is not installed)"
    if not args.device.startswith("cuda"):
        return "skipped (vllm needs a GPU)"
    try:
        from vllm import LLM, SamplingParams

        llm = LLM(model=str(model_dir), dtype=args.dtype, seed=args.seed, gpu_memory_utilization=0.35)
        params = SamplingParams(n=args.group_size, temperature=1.0, top_p=1.0, max_tokens=args.max_new_tokens)
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        tokens = 0
        for _ in range(args.repeats):
            for request in llm.generate(prompts, params, use_tqdm=False):
                tokens += sum(len(o.token_ids) for o in request.outputs)
        return f"{tokens / (time.perf_counter() - t0):.1f}"
    except Exception as err:  # noqa: BLE001 - a benchmark row, not a failure of the run
        return f"skipped ({type(err).__name__}: {str(err).splitlines()[0][:80]})"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _med(rec, key) -> float:
    return statistics.median(rec[key]) if rec.get(key) else float("nan")


def _paired(base: dict, rec: dict, key: str, fn) -> float:
    """Median over steps of fn(base_i, rec_i): the variants of `enigma_paired` step on the same episodes."""
    if key not in base or key not in rec:
        return float("nan")
    return statistics.median(fn(x, y) for x, y in zip(base[key], rec[key]))


def report(name: str, rows: list[tuple[str, dict]], paired: set[str], n_params: int, peak: float | None,
           gens) -> None:
    grpo = rows[0][1]
    base = _med(grpo, "step")
    print(f"\n[{name}] step (enigma rows: the same episodes each step; ratio = median of per-step ratios)")
    header = f"{'run':>34} {'s/step':>8} {'gen tok/s':>10} {'upd tok/s':>10} {'MFU':>7} {'time / true GRPO':>17}"
    print(header + "\n" + "-" * len(header))
    for label, rec in rows:
        upd = sum(rec["upd_tokens"]) / sum(rec["update"])
        mfu = f"{6 * n_params * upd / (peak * 1e12):.2%}" if peak else "-"
        ratio = _paired(grpo, rec, "step", lambda x, y: y / x) if label in paired else _med(rec, "step") / base
        print(f"{label:>34} {_med(rec, 'step'):>8.3f} {sum(rec['gen_tokens']) / sum(rec['step']):>10.1f} "
              f"{upd:>10.1f} {mfu:>7} {ratio:>17.2f}")
    if gens:
        print(f"\n[{name}] generation tokens/s (rollout.generate engines, then vLLM)")
        for engine, rate in gens:
            print(f"{engine:>34} {rate}")
    enigma = rows[1][1]
    print(f"\n[{name}] ENIGMA's extra over the true GRPO-only step, on the same episodes (median seconds; median "
          f"per-step extra; its share of the GRPO step)")
    for label, key in [("reference pass", "scoring"), ("update", "update"), ("  of which Sinkhorn", "sinkhorn")]:
        extra = _paired(grpo, enigma, key, lambda x, y: y - x)
        print(f"{label:>34} {_med(grpo, key):>8.3f} -> {_med(enigma, key):>8.3f}  extra {extra:+.3f} "
              f"({extra / base:+.1%})")
    tokens = _paired(grpo, enigma, "upd_tokens", lambda x, y: y / x)
    whole = _paired(grpo, enigma, "step", lambda x, y: y / x) - 1
    print(f"{'update tokens ENIGMA / GRPO':>34} {tokens:.2f}   whole step: {whole:+.1%}")
    mixed = [(label, rec) for label, rec in rows if label.endswith(f", {MIXED}")]
    if mixed:
        print(f"\n[{name}] {MIXED} / float32, same run (median of per-step ratios; > 1 is faster for the rates, "
              "< 1 for the times)")
        print(f"{'run':>34} {'s/step':>8} {'update s':>9} {'scoring s':>10} {'upd tok/s':>10} {'gen tok/s':>10}")
        for label, rec in mixed:
            base_rec = dict(rows)[label.removesuffix(f", {MIXED}")]
            ratio = {key: _paired(base_rec, rec, key, lambda x, y: y / x if x > 0 else float("nan"))
                     for key in ("step", "update", "scoring")}
            upd = 1.0 / ratio["update"]  # both update on the same episodes: the update rate's ratio
            # each samples its own episodes: the ratio of the rates over the run
            gen = (sum(rec["gen_tokens"]) / sum(rec["generation"])) / (sum(base_rec["gen_tokens"])
                                                                      / sum(base_rec["generation"]))
            print(f"{label.removesuffix(f', {MIXED}'):>34} {ratio['step']:>8.2f} {ratio['update']:>9.2f} "
                  f"{ratio['scoring']:>10.2f} {upd:>10.2f} {gen:>10.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (both sides)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (after 1 warm-up step)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group-size", "-G", type=int, default=8)
    p.add_argument("--principles", default="stepwise-vs-oneline", help="the principle set enigma draws from")
    p.add_argument("-K", dest="k", type=int, default=2, help="principles per prompt")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="an enigma model spec instead of enigma-tiny, e.g. smollm2")
    p.add_argument("--model-config", default=None,
                   help="presets of bench/random_models.py (comma-separated) or a JSON of LlamaConfig fields")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s for MFU (default: known GPUs)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="also time enigma with it on")
    p.add_argument("--logging-costs", action="store_true",
                   help="also time GRPO only with each logged extra (critic MI, reference KL/drift, both)")
    p.add_argument("--wall", action="store_true", help="wall-clock time on a CPU too (default: process CPU time)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--sami-prompts", type=int, nargs="*", default=[],
                   help="also time ENIGMA with --sami-prompts N for each N given (the SAMI subsample option)")
    p.add_argument("--skip-generation", action="store_true", help="leave out the per-engine generation table")
    p.add_argument("--autocast", action="store_true",
                   help=f"also time every variant in {MIXED} (float32 weights, bf16 autocast) beside --dtype")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if (args.wall or args.device.startswith("cuda")) else time.process_time
    torch.manual_seed(args.seed)
    shapes = args.model_config.split(",") if args.model_config else [None]
    peak = peak_tflops(args.device, args.peak_tflops)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} dtype={args.dtype} "
          f"prompts={args.prompts} G={args.group_size} K={args.k} set={args.principles} "
          f"max_new_tokens={args.max_new_tokens} steps={args.repeats} (+1 warm-up); medians; "
          f"{'wall' if CLOCK is time.perf_counter else 'CPU (process)'} seconds")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            model_dir = args.model or model_folder(shape, tmp, args.seed)
            name = args.model or shape or "enigma-tiny"
            n_params = load_model(str(model_dir), device="cpu").model.num_parameters()
            print(f"\n=== {name}: N = {n_params:,} parameters")
            variants = [("enigma GRPO only (true)", TRUE_GRPO), ("enigma ENIGMA (defaults)", {})]
            if args.gradient_checkpointing:
                variants += [("enigma GRPO only, grad ckpt ON", {**TRUE_GRPO, "gradient_checkpointing": True}),
                             ("enigma ENIGMA, grad ckpt ON", {"gradient_checkpointing": True})]
            variants += [(f"enigma ENIGMA, --sami-prompts {n}", {"sami_prompts": n}) for n in args.sami_prompts]
            if args.logging_costs:
                variants += [("GRPO only + critic metrics", {**TRUE_GRPO, "critic_metrics": True}),
                             ("GRPO only + ref metrics", {**TRUE_GRPO, "ref_metrics": True}),
                             ("GRPO only, both (the defaults)", {"sami": False, "ot": False})]
            if args.autocast:
                variants += [(f"{label}, {MIXED}", {**options, "dtype": MIXED}) for label, options in variants]
            rows = list(enigma_paired(args, model_dir, tmp, variants).items())
            paired = {label for label, _ in rows}
            if not args.skip_trl:
                rows += [("TRL GRPOTrainer, grad ckpt ON*", trl_run(args, model_dir, f"{tmp}/t1", True)),
                         ("TRL GRPOTrainer, grad ckpt OFF", trl_run(args, model_dir, f"{tmp}/t0", False))]
                if args.autocast:
                    rows.append((f"TRL GRPOTrainer, grad ckpt OFF, {MIXED}",
                                 trl_run(args, model_dir, f"{tmp}/t2", False, autocast=True)))
            gens = None if args.skip_generation else generation_rates(args, model_dir)
            report(name, rows, paired, n_params, peak, gens)
    print("\n* TRL's GRPOConfig default. gen tok/s = completion tokens / whole step time; upd tok/s = tokens through "
          "the update's forward+backward / the update's time; MFU = 6·N·upd tok/s / peak (bf16 dense).")


if __name__ == "__main__":
    main()
