"""Data-parallel plumbing for `enigma train` under `torchrun` / `accelerate launch` (DDP).

We build no orchestration of our own: if the launcher set WORLD_SIZE > 1 we join its process group (gloo on CPU,
nccl on CUDA), wrap the policy in DistributedDataParallel, give each rank its own prompts, and let rank 0 alone
write files. Metrics are averaged over ranks before rank 0 logs them; completions are gathered to rank 0, so that
`completions.jsonl` holds every rank's; `launch_info` records the world size and launcher in the run folder.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment; (0, 0, 1) when run plainly."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> tuple[int, int]:
    """Join the launcher's process group when there is one; returns (rank, world_size)."""
    rank, _, size = world()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, size


def is_main() -> bool:
    return world()[0] == 0


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a flat dict of floats over ranks (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_ranks_true(flag: bool) -> bool:
    """True when `flag` holds on every rank (the flag itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) == 0.0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_to_main(obj):
    """Every rank's `obj` as a list on rank 0 (``torch.distributed.gather_object``), None on the other ranks;
    ``[obj]`` when not distributed. Every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def launch_info() -> dict:
    """How this run was launched: world size, ranks per node, nodes, and the launcher (from its environment)."""
    env = os.environ
    _, _, size = world()
    per_node = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    if any(key.startswith("ACCELERATE_") for key in env):
        launcher = "accelerate"
    elif "TORCHELASTIC_RUN_ID" in env:
        launcher = "torchrun"
    elif size > 1:
        launcher = "other"
    else:
        launcher = "none"
    info = {"world_size": size, "ranks_per_node": per_node, "nodes": max(1, size // max(per_node, 1)),
            "launcher": launcher}
    extras = {"mixed_precision": "ACCELERATE_MIXED_PRECISION", "use_fsdp": "ACCELERATE_USE_FSDP",
              "use_deepspeed": "ACCELERATE_USE_DEEPSPEED", "config_file": "ACCELERATE_CONFIG_FILE"}
    info.update({name: env[key] for name, key in extras.items() if key in env})
    return info
