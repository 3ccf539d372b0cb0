"""The samplers of `sampler`: the shared-prompt loop against each architecture's own forward and `generate`, the
sampled distribution against an independent nucleus, seeds, EOS, and the one place where the engine is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from archs import ARCHS, VOCAB, build, naive

import enigma_cli
from enigma_cli.models import prefix, sampler
from enigma_cli.models.sampler import GenerateSampler, SharedPrefixSampler, make_sampler

# Distinct prompts of lengths 5, 8, 2, each sampled several times (groups share one prompt cache).
PROMPTS = [[7, 9, 11, 13, 15], [30, 31, 32, 33, 34, 35, 36, 37], [20, 21]]


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request):
    return build(request.param, seed=1)


def _recorded(model, monkeypatch, **kwargs):
    """`SharedPrefixSampler.generate`, plus (logits, live rows) of every step it sampled from."""
    seen = []
    original = sampler.next_tokens

    def spy(logits, live, total, temperature, top_p, groups=None):
        seen.append((logits.detach().clone(), live.clone()))
        return original(logits, live, total, temperature, top_p, groups)

    monkeypatch.setattr(sampler, "next_tokens", spy)
    return SharedPrefixSampler(model).generate(PROMPTS, **kwargs), seen


def _frequent_token(model, seed: int = 0, temperature: float = 1.0) -> int:
    """A token that about half of the rows sampled with ``seed`` produce, at various steps: an EOS that ends rows
    unevenly. (The random stream does not depend on which rows have ended, so the same seed with this EOS
    draws the same rows up to their first EOS.)"""
    out = SharedPrefixSampler(model).generate(PROMPTS, num_samples=4, max_new_tokens=10, temperature=temperature,
                                              seed=seed, eos_ids=[])
    rows = torch.zeros(VOCAB)
    for c in out.completion_ids:
        rows[list(set(c))] += 1
    return int((rows - len(out.completion_ids) / 2).abs().argmin())


def test_each_step_reads_the_models_own_forward(model, monkeypatch):
    """Every step's logits of every live row equal one unpadded forward of that row's prompt and tokens so far,
    while rows end at different steps and leave the batch."""
    eos = _frequent_token(model, seed=3)
    out, seen = _recorded(model, monkeypatch, num_samples=4, max_new_tokens=10, temperature=1.0, seed=3,
                          eos_ids=[eos])
    assert 0 < sum(out.finished) < len(out.finished)
    assert min(len(live) for _, live in seen) < len(out.finished)  # ended rows left the batch
    rows = [p for p in PROMPTS for _ in range(4)]
    with torch.no_grad():
        for step, (logits, live) in enumerate(seen):
            for k, row in enumerate(live.tolist()):
                if len(out.completion_ids[row]) <= step:  # ended, riding along until the batch is compacted
                    continue
                expected, _ = naive(model, rows[row], out.completion_ids[row][:step])
                torch.testing.assert_close(logits[k].double(), expected[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_shared_draws_what_generate_draws(model, temperature):
    """For a seed, token for token the samples of `model.generate`, EOS cuts and ended rows included."""
    eos = _frequent_token(model, seed=5, temperature=max(temperature, 0.7))
    kwargs = {"num_samples": 4, "max_new_tokens": 10, "temperature": temperature, "top_p": 0.9, "seed": 5,
              "eos_ids": [eos], "pad_id": 0}
    shared = SharedPrefixSampler(model).generate(PROMPTS, **kwargs)
    plain = GenerateSampler(model).generate(PROMPTS, **kwargs)
    assert shared.completion_ids == plain.completion_ids and shared.finished == plain.finished
    for ids, done in zip(shared.completion_ids, shared.finished):
        assert eos not in ids[:-1] and done == (ids[-1] == eos) and (done or len(ids) == 10)


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The nucleus distribution, written independently of transformers' warpers: a token stays if the tokens
    strictly likelier than it hold less than ``top_p`` of the mass."""
    probs = (logits.double() / temperature).softmax(-1)
    kept = torch.tensor([float(probs[probs > q].sum()) < top_p for q in probs])
    probs = torch.where(kept, probs, torch.zeros_like(probs))
    return probs / probs.sum()


@pytest.mark.parametrize("top_p", [1.0, 0.6])
def test_first_tokens_follow_the_models_distribution(top_p):
    """3000 first tokens of one prompt: a chi-square test against the nucleus of the model's own next-token
    distribution, and never a token outside the nucleus."""
    from scipy.stats import chi2

    model = build("qwen2", seed=2)
    n, temperature = 3000, 1.3
    out = SharedPrefixSampler(model).generate([PROMPTS[0]], num_samples=n, max_new_tokens=1,
                                              temperature=temperature, top_p=top_p, seed=1)
    counts = torch.bincount(torch.tensor([c[0] for c in out.completion_ids]), minlength=VOCAB).double()
    with torch.no_grad():
        truth = _nucleus(naive(model, PROMPTS[0], [])[0][-1], temperature, top_p)
    assert counts[truth == 0].sum() == 0 and int((truth > 0).sum()) > 5
    expected = truth * n
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum().view(1)])
    expected = torch.cat([expected[big], expected[~big].sum().view(1)])
    observed, expected = observed[expected > 0], expected[expected > 0]
    stat = float(((observed - expected) ** 2 / expected).sum())
    assert chi2.sf(stat, len(expected) - 1) > 1e-3


def test_seeds_batches_and_the_global_rng():
    model = build("llama", seed=4)
    run = SharedPrefixSampler(model).generate
    kwargs = {"num_samples": 3, "max_new_tokens": 6, "temperature": 1.0}
    before = torch.get_rng_state()
    a = run(PROMPTS, seed=7, **kwargs)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    assert a == run(PROMPTS, seed=7, **kwargs) and a != run(PROMPTS, seed=8, **kwargs)
    assert len(set(map(tuple, a.completion_ids[:3]))) > 1  # samples of one prompt differ
    greedy = {"num_samples": 2, "max_new_tokens": 6, "temperature": 0.0}
    assert run(PROMPTS, batch_size=1, **greedy) == run(PROMPTS, **greedy)  # batches change no greedy row
    model.train()
    run(PROMPTS, **greedy)
    assert model.training  # the mode is restored


def test_per_prompt_seeds_make_each_prompt_independent_of_the_batch():
    """With one seed per prompt, a prompt's samples are those it gets alone with its seed, at any batch position
    and engine, and for any batch size that holds its samples (a smaller one splits a prompt's rows over batches:
    the same for the prompt alone or in company); one shared seed does not have this."""
    model = build("llama", seed=4)
    kwargs = {"num_samples": 3, "max_new_tokens": 6, "temperature": 1.0}
    seeds = [11, 12, 13]
    for engine in (SharedPrefixSampler(model), GenerateSampler(model)):
        def alone(batch_size=None, engine=engine):
            return [engine.generate([p], seed=[s], batch_size=batch_size, **kwargs).completion_ids
                    for p, s in zip(PROMPTS, seeds)]

        whole = alone()
        assert whole[0] == engine.generate([PROMPTS[0]], seed=11, **kwargs).completion_ids  # the seed's draws
        for batch_size in (None, 2, 3, 7):
            together = engine.generate(PROMPTS, seed=seeds, batch_size=batch_size, **kwargs).completion_ids
            expected = whole if batch_size is None or batch_size >= 3 else alone(batch_size)
            assert [together[3 * i : 3 * i + 3] for i in range(3)] == expected, (engine.name, batch_size)
        reverse = engine.generate(PROMPTS[::-1], seed=seeds[::-1], **kwargs).completion_ids
        assert [reverse[3 * i : 3 * i + 3] for i in range(3)] == whole[::-1]
    shared = SharedPrefixSampler(model).generate(PROMPTS, seed=seeds, **kwargs)
    assert shared == GenerateSampler(model).generate(PROMPTS, seed=seeds, **kwargs)
    one = SharedPrefixSampler(model).generate(PROMPTS, seed=11, **kwargs).completion_ids
    assert one[3:6] != SharedPrefixSampler(model).generate(PROMPTS[1:], seed=11, **kwargs).completion_ids[:3]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        SharedPrefixSampler(model).generate(PROMPTS, seed=[1, 2], **kwargs)


def test_ended_rows_change_no_other_row():
    """Greedy with an EOS is greedy without one, cut after the first EOS."""
    model = build("mistral", seed=5)
    eos = _frequent_token(model)
    run = SharedPrefixSampler(model).generate
    free = run(PROMPTS, num_samples=2, max_new_tokens=12, temperature=0.0, eos_ids=[])
    cut = run(PROMPTS, num_samples=2, max_new_tokens=12, temperature=0.0, eos_ids=[eos])
    expected = [c[: c.index(eos) + 1] if eos in c else c for c in free.completion_ids]
    assert cut.completion_ids == expected and cut.finished == [eos in c for c in free.completion_ids]


def test_bad_arguments_are_refused():
    shared = SharedPrefixSampler(build("llama"))
    for kwargs in ({"num_samples": 0}, {"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}):
        with pytest.raises(ValueError):
            shared.generate(PROMPTS, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        shared.generate([[1], []])


def test_the_engine_is_chosen_in_one_place():
    model = build("gpt2")
    assert isinstance(make_sampler(model), SharedPrefixSampler)  # any architecture with a key/value cache
    assert isinstance(make_sampler(model, "hf"), GenerateSampler)
    assert isinstance(make_sampler(model, "lean"), SharedPrefixSampler)  # the former engine's name, kept
    with pytest.raises(ValueError, match="one of auto, shared, hf"):
        make_sampler(model, "fast")
    peft = pytest.importorskip("peft")
    tuned = peft.get_peft_model(build("llama"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert not prefix.supports(tuned) and isinstance(make_sampler(tuned), GenerateSampler)
    with pytest.raises(ValueError, match="cannot serve"):
        make_sampler(tuned, "shared")
    # Nothing else in the package constructs a sampler or calls `generate` on a policy itself.
    package = Path(enigma_cli.__file__).parent
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        # pretraining enigma-tiny prints a few samples of its own (models/pretrain.py, or a pretrain/ package)
        if relative.name == "sampler.py" or "pretrain" in {relative.stem, *relative.parts[:-1]}:
            continue
        text = path.read_text()
        for needle in ("SharedPrefixSampler(", "GenerateSampler(", "model.generate("):
            assert needle not in text, f"{relative} builds its own sampler ({needle})"
