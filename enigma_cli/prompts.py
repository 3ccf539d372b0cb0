"""How a (principle, question) pair becomes the text a model is conditioned on.

One definition shared by every command and by the build of enigma-tiny, so that the default model is trained
on exactly the prompts it is later asked. The principle goes in the system message (method.md §3); the format
instruction follows it so that format-only rewards (method.md §1) ask for something the prompt states.
"""

from __future__ import annotations

FORMAT_INSTRUCTION = (
    "Answer in this format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)


def system_message(principle: str | None) -> str:
    """The system message: the principle (if any), then the format instruction."""
    principle = (principle or "").strip()
    return f"{principle}\n{FORMAT_INSTRUCTION}" if principle else FORMAT_INSTRUCTION


def chat_messages(principle: str | None, question: str) -> list[dict[str, str]]:
    """Chat messages for one prompt: system = principle + format instruction, user = question."""
    return [
        {"role": "system", "content": system_message(principle)},
        {"role": "user", "content": question.strip()},
    ]


def render_prompt(tokenizer, principle: str | None, question: str) -> str:
    """The prompt text, through the tokenizer's chat template when it has one, else a plain fallback.

    The result ends where the assistant's completion begins; it includes no special BOS token that the
    tokenizer would add again when encoding.
    """
    return render_messages(tokenizer, chat_messages(principle, question))


def render_messages(tokenizer, messages: list[dict[str, str]]) -> str:
    """Any chat history rendered as `render_prompt` renders one turn, ending where the assistant's reply begins.

    The one renderer of enigma's prompts, so that lm-evaluation-harness's chat histories (`evaluate.harness`) are
    written exactly as enigma writes its own: a template that rejects a system role gets the system message folded
    into the first user turn, and a tokenizer without a template gets ``Role: content`` lines.
    """
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - some templates reject a system role; fold it into the user turn
            return tokenizer.apply_chat_template(_fold_system(messages), tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant: "


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = "\n".join(system) + "\n\n" + rest[0]["content"]
    return rest
