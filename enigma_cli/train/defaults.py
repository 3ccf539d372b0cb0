"""Training defaults that suit the model: the learning rate and LoRA rank resolve per model size, and two warnings
watch a run for what a new user most often meets (no GRPO signal at all, a policy leaving its reference fast).

Why (docs/method.md §8): 3e-4 suits the ~1M-parameter enigma-tiny, but at that rate the SAMI and OT terms alone
took SmolLM2-135M to KL 0.27 after one update, and its completions to gibberish. For 0.1–1B models TRL's GRPO
default is 1e-6 for full fine-tuning, LoRA runs commonly use 1e-5 to 1e-4, and the ENIGMA paper trains with LoRA
r = 16. Our choice: below `SMALL_MODEL` parameters, full fine-tuning at 3e-4; above, LoRA r = 16 at 2e-5 (full
fine-tuning, if asked for with --lora-r 0, at 1e-6). A value the user gave always wins.
"""

from __future__ import annotations

import dataclasses

from ..console import console
from ..models.size import SMALL_MODEL, is_small, parameter_count  # noqa: F401 - parameter_count re-exported

SMALL_LR = 5e-5
LORA_R = 16
LORA_LR = 2e-5
FULL_LR = 1e-6


def resolve_for_model(cfg, n_params: int):
    """`cfg` with `lr` and `lora_r` filled in where they were left to `None` (auto); says what it chose."""
    small = is_small(n_params)
    lora_r = cfg.lora_r if cfg.lora_r is not None else (0 if small else LORA_R)
    lr = cfg.lr if cfg.lr is not None else (SMALL_LR if small else LORA_LR if lora_r > 0 else FULL_LR)
    chosen = []
    if cfg.lora_r is None:
        chosen.append(f"LoRA r {lora_r}" if lora_r else "full fine-tuning")
    if cfg.lr is None:
        chosen.append(f"lr {lr:g}")
    if chosen:
        console.print(f"{' and '.join(chosen)} (auto, for a model of {n_params / 1e6:.1f}M parameters; set --lr or "
                      "--lora-r to choose)", highlight=False)
    return dataclasses.replace(cfg, lr=lr, lora_r=lora_r)


def for_model(cfg, model):
    """`resolve_for_model` for a loaded model (its parameter count)."""
    return resolve_for_model(cfg, parameter_count(model))


class Watch:
    """Warns once when the reward has no spread in any group (saying whether the --saturated-reward fallback
    gives GRPO a signal there), and once when the KL to the reference passes `kl_warn`; each warning says what to
    do about it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.warned: set[str] = set()

    def see(self, row: dict) -> list[str]:
        said = []
        silent = row.get("advantage_std", 1.0) == 0.0
        # rows without the column (older runs) count as saturated exactly when there is no signal
        flat = row.get("saturated_groups", 1.0 if silent else 0.0) >= 1.0
        if "signal" not in self.warned and (silent or flat):
            self.warned.add("signal")
            said.append(self._no_spread(row, silent))
        kl = row.get("kl_ref")
        if "kl" not in self.warned and kl is not None and kl > self.cfg.kl_warn:
            self.warned.add("kl")
            said.append(f"step {row['step']}: KL to the reference is {kl:.3f}, past --kl-warn {self.cfg.kl_warn:g}: "
                        f"the policy is moving fast; lower --lr (now {self.cfg.lr:g})"
                        + (" or train a LoRA adapter (--lora-r 16)." if not self.cfg.lora_r else "."))
        for message in said:
            console.print(f"[yellow]warning:[/] {message}", highlight=False)
        return said

    def _no_spread(self, row: dict, silent: bool) -> str:
        """The step's warning when no group's reward has any spread, naming the --saturated-reward in force."""
        rate, cfg, fallback = row.get("format_rate", float("nan")), self.cfg, self.cfg.saturated_reward
        head = f"step {row['step']}: every group's completions got the same reward (format rate {rate:.2f})"
        saturated = f": the reward (--reward {cfg.reward}) has saturated"
        if fallback != "none" and not silent:
            return (f"{head}{saturated}; the {fallback} reward ranks those groups instead (--saturated-reward "
                    f"{fallback}), so GRPO learns which answers each group agrees on.")
        no_signal = ", so GRPO has no signal and only the auxiliary terms move the model"
        if not rate >= 0.5:  # the model (almost) never writes the layout: nothing to reward yet
            return (f"{head}{no_signal}; warm it up with `enigma sft --model {cfg.model}` or use a model that writes "
                    "the <reasoning>/<answer> layout.")
        if fallback == "none":
            return (f"{head}{saturated}{no_signal} (--saturated-reward none; --saturated-reward coherence would rank "
                    "such groups by how often their answers agree).")
        return (f"{head}{saturated}, and the {fallback} reward that ranks such groups (--saturated-reward {fallback}) "
                f"found every group agreeing on one answer{no_signal}.")
