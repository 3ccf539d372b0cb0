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
    messages = chat_messages(principle, question)
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - some templates reject a system role; fold it into the user turn
            merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}]
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    return f"System: {messages[0]['content']}\nUser: {messages[1]['content']}\nAssistant: "
