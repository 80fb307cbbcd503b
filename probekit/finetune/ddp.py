"""Multi-process training under `torchrun`: who am I, sums across processes, one writer.

`torchrun --nproc-per-node N -m probekit finetune ...` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them everything here is a no-op for a single process. Under torchrun the process group
is joined even for N = 1, so a one-GPU machine runs (and tests) the multi-GPU code: DDP,
NCCL all-reduces, barriers. Only rank 0 writes the run
folder and checkpoints; every rank reads the same checkpoint on resume (the run folder must
be on a filesystem all nodes share).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False  # joined a process group (launched by torchrun), whatever the world size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.distributed or self.world > 1


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (its env:// rendezvous variables are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def setup(device: str | None) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from probekit.errors import UserError

            raise UserError(f"--device {device} asked for CUDA but no GPU is visible; pass --device cpu")
        if (world > 1 or launched_by_torchrun()) and dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    distributed = world > 1 or launched_by_torchrun()
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, distributed), dev


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
