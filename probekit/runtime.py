"""What long-running commands share: stop signals, device choice, precision, the torchrun environment.

`extract` and `finetune` stop the same way (SIGTERM or the first Ctrl-C finishes the
current batch / step, checkpoints, and exits 128 + signal with the command that resumes;
a second Ctrl-C stops at once), pick devices the same way (``LOCAL_RANK``-aware under
torchrun) and name precisions the same way. torch is imported inside the functions, so
importing this module stays cheap.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from probekit.errors import UserError, unknown_name

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class Stopped(Exception):
    """A SIGTERM / Ctrl-C stop that has been checkpointed; the message says how to resume.

    The CLI prints the message and exits with `exit_code` (128 + signal: 143 for SIGTERM,
    130 for Ctrl-C)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


class StopRequest:
    """Turns SIGTERM and the first Ctrl-C into a request the loop honours at its next safe point.

    A second Ctrl-C raises KeyboardInterrupt at once (what is committed stays). Handlers are
    installed only in the main thread and restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self, what: str, resume: str) -> Stopped:
        """The `Stopped` to raise once the checkpoint is safe: "stopped by SIGTERM after <what>; <resume>"."""
        signum = self.signum or signal.SIGTERM
        return Stopped(f"stopped by {signal.Signals(signum).name} after {what}; {resume}", signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK); one process without it.

    `launched`: started by torchrun (its env:// rendezvous variables are set). One torchrun
    process takes the distributed path too, so that path is testable on one GPU."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether to join a process group: launched by torchrun, or more than one process."""
        return self.launched or self.world > 1


def torchrun_env() -> TorchrunEnv:
    """The torchrun variables of this process (defaults for a plain single process)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise UserError(f"environment variable {name}={value!r} is not an integer; unset it or launch with torchrun") from None

    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    return TorchrunEnv(read("RANK", 0), max(1, read("WORLD_SIZE", 1)), read("LOCAL_RANK", 0), launched)


def choose_device(device: Any = None):
    """The torch device to run on: `device` as given, else CUDA when present, else CPU.

    A CUDA device without an index (or no device at all) is this process's ``cuda:LOCAL_RANK``
    (``cuda:0`` outside torchrun). A bad name or CUDA asked for without a GPU is a UserError."""
    import torch

    local = torchrun_env().local_rank
    if device is None or device == "":
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use e.g. cpu, cuda or cuda:1") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for CUDA but no GPU is visible; pass --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local % torch.cuda.device_count())
    return dev


def autocast_dtype(precision: str, device: Any, *, allowed: tuple[str, ...] = PRECISIONS):
    """The autocast dtype of a precision name (None = fp32, no autocast).

    ``auto`` is bf16 on a CUDA device that supports it, else fp32."""
    import torch

    if precision not in allowed:
        raise unknown_name("precision", str(precision), allowed)
    if precision == "auto":
        cuda = getattr(device, "type", str(device)).startswith("cuda")
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: Any) -> str:
    """The inverse of `autocast_dtype`: ``None`` -> ``fp32``, ``torch.bfloat16`` -> ``bf16``..."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: Any, dtype: Any):
    """``torch.autocast`` for `dtype` on `device`'s type; a no-op context for fp32 (dtype None)."""
    import torch

    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
