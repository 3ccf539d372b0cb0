"""The model card (README.md) written into the enigma-tiny folder, from its build_info.json contents."""

from __future__ import annotations


def model_card(info: dict) -> str:
    """A short README for the model folder, from its ``build_info.json`` contents."""
    cfg = info.get("config", {})
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.items())
    lines = [
        "# enigma-tiny",
        "",
        (f"A {info['parameters']:,}-parameter Llama-architecture causal LM (vocabulary {info['vocab_size']}, "
        "byte-level BPE trained by `enigma`), the built-in default model of `enigma`. It was pre-trained from "
        "random initialisation on the synthetic arithmetic tasks, with a principle in the system prompt, to write "
        "`<reasoning>…</reasoning><answer>…</answer>` completions in the style its principle asks for. A fraction "
        f"of its training completions ({info['format_noise']:.0%}) break the format and another "
        f"({info['style_noise']:.0%}) ignore the principle, so that it does both imperfectly: it is a test bed "
        "for GRPO and the principle term, not a capable model."),
        "",
        "Rebuild it (bit for bit with the same torch version, one thread):",
        "",
        f"    enigma build-default-model {flags}",
        "",
        (f"Training: {info['examples']} examples, {info['steps']} steps of {info['batch_size']}, "
        f"final completion loss {info['train']['final_loss']:.3f}, torch {info['torch']}."),
    ]
    ev = info.get("eval")
    if ev:
        lines += [
            "",
            f"Measured on {ev['n']} held-out problems, principle i mod P of the shipped sets:",
            "",
            "| decoding | strict format | soft format | answer accuracy | principle style recovered |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label in ("sampled", "greedy"):
            name = "sampled, T = 1" if label == "sampled" else "greedy"
            lines.append(f"| {name} | {ev[f'{label}_format_rate']:.1%} | {ev[f'{label}_soft_format_rate']:.1%} | "
                         f"{ev[f'{label}_accuracy']:.1%} | {ev[f'{label}_distinguishability']:.1%} |")
        lines += ["", (f"Chance for the principle style is {ev['chance_distinguishability']:.1%} "
                      f"({ev['styles']} styles).")]
    return "\n".join(lines) + "\n"
