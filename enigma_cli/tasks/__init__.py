"""Tasks: the built-in synthetic problems and the completions that obey each shipped principle."""

from .synthetic import (
    STYLE_OF,
    STYLES,
    Problem,
    detect_style,
    format_completion,
    generate_problems,
    is_heldout,
    reasoning_text,
    render_completion,
    style_of,
    training_examples,
    write_jsonl,
)

__all__ = [
    "STYLES",
    "STYLE_OF",
    "Problem",
    "detect_style",
    "format_completion",
    "generate_problems",
    "is_heldout",
    "reasoning_text",
    "render_completion",
    "style_of",
    "training_examples",
    "write_jsonl",
]
