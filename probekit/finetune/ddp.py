"""Multi-process training under `torchrun`: who am I, sums across processes, one writer.

`torchrun --nproc-per-node N -m probekit finetune ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them everything here is a no-op for a single process. Under torchrun the process group
is joined even for N = 1, so a one-GPU machine runs (and tests) the multi-GPU code: DDP,
NCCL all-reduces, barriers. Only rank 0 writes the run
folder and checkpoints; every rank reads the same checkpoint on resume (the run folder must
be on a filesystem all nodes share).
"""

from __future__ import annotations

import torch

from probekit.runtime import TorchrunEnv


Dist = TorchrunEnv  # this process's rank, world size, local rank and whether torchrun launched it


def setup(device: str | None) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device (`probekit.runtime`)."""
    from probekit.runtime import choose_device, torchrun_env

    env = torchrun_env()
    dev = choose_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return env, dev


def teardown(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_sum(dist: Dist, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place); identity for one process."""
    if dist.enabled:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values


def any_true(dist: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank says so (a stop request must be agreed on)."""
    if not dist.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_sum(dist, t).item() > 0)


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


def broadcast_error(dist: Dist, message: str | None) -> str | None:
    """Share rank 0's error message (or None) so all ranks fail alike on bad input."""
    if not dist.enabled:
        return message
    box = [message]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
