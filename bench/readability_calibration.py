"""Calibration of the readability check of `enigma score-principles` (enigma_cli.score.trust).

For each ``--model``, prints every shipped principle text and a few user-written ones (the organisational set
and the 5,000-character principle of tests/fixtures, plus three short ones) with: tokens, characters per token,
segmentation (how many times the shipped principles' tokens per character; flagged above
``trust.SEGMENTATION_LIMIT``), the words outside enigma-tiny's corpus (enigma-tiny only) and whether the
principle is flagged. The shipped texts must not be flagged; the organisational and long ones must be on
enigma-tiny.

    OMP_NUM_THREADS=1 .venv/bin/python bench/readability_calibration.py --model enigma-tiny smollm2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from enigma_cli.models.loading import load_model
from enigma_cli.principles import load_principle_set
from enigma_cli.score import trust

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
EXTRA = ("Show your work.", "Explain each step in plain words.", "Answer in French.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["enigma-tiny"])
    args = parser.parse_args()
    for spec in args.model:
        lm = load_model(spec, device="cpu")
        tok = lm.tokenizer
        ref = trust.chars_per_token(tok, trust.shipped_principle_texts())
        tiny = trust.is_enigma_tiny(lm.source)
        vocab = trust.tiny_vocabulary() if tiny else None
        print(f"\n{spec}: shipped principles pool at {ref:.2f} characters per token; "
              f"corpus vocabulary known: {tiny}")
        texts = [("shipped", t) for t in trust.shipped_principle_texts()]
        for name in ("organisational.yaml", "long-principle.yaml"):
            texts += [(p.id, p.text) for p in load_principle_set(FIXTURES / name).principles]
        texts += [("extra", t) for t in EXTRA]
        print("| kind | tokens | chars/token | segmentation | unseen words | flagged | text |")
        print("|---|---|---|---|---|---|---|")
        for kind, text in texts:
            r = trust.readability(tok, text, ref, vocab)
            flagged = trust.readability_finding(kind, r, tiny) is not None
            unseen = ", ".join(r.unseen[:4]) + (" ..." if len(r.unseen) > 4 else "")
            print(f"| {kind} | {r.tokens} | {r.chars_per_token:.2f} | {r.segmentation:.2f} | {unseen} | "
                  f"{'yes' if flagged else 'no'} | {text[:48]}{'...' if len(text) > 48 else ''} |")


if __name__ == "__main__":
    main()
