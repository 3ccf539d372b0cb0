"""ENIGMA on TRL: `EnigmaGRPOTrainer`, a `trl.GRPOTrainer` that adds the SAMI and Sinkhorn OT terms, and its config.

A TRL script gains ENIGMA with one import and a few config fields::

    from enigma_cli.trl import EnigmaGRPOConfig, EnigmaGRPOTrainer

    args = EnigmaGRPOConfig(output_dir="out", num_generations=4, per_device_train_batch_size=16,
                            principles="stepwise-vs-oneline", principles_per_prompt=2, lambda_sami=0.1, lambda_ot=1.0)
    trainer = EnigmaGRPOTrainer(model="...", args=args, train_dataset=questions)  # reward: format-only by default
    trainer.train()

Everything TRL offers stays: accelerate (DDP, FSDP, DeepSpeed, mixed precision), vLLM generation, ``report_to``,
the Hub. See `enigma_cli.trl.trainer` for how the grouping maps onto TRL's and where the loss differs.
"""

from importlib import import_module

__all__ = ["EnigmaGRPOConfig", "EnigmaGRPOTrainer", "EnigmaReward", "enigma_reward_funcs"]
_HOME = {"EnigmaGRPOConfig": ".config", "EnigmaGRPOTrainer": ".trainer", "EnigmaReward": ".rewards",
         "enigma_reward_funcs": ".rewards"}


def __getattr__(name: str):
    """The public names, imported on first use: `enigma train` reads `enigma_cli.trl.options` (its checks) without
    paying for TRL's import unless it trains with it."""
    if name in _HOME:
        return getattr(import_module(_HOME[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
