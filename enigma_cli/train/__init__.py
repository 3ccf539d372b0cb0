"""The ENIGMA training loop: GRPO + SAMI InfoNCE + Sinkhorn OT (method.md §2-5, §7)."""
