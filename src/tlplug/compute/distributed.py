"""Running as one of several processes started by ``torchrun`` (data-parallel training).

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and the rendezvous variables)
in every process it starts; :func:`join` reads them, joins the process group (NCCL on
GPUs, gloo on CPU) and says which process this is. Outside torchrun a run is a world of
one and nothing here talks to another process.

The data-parallel wrapper of a stage's training step is chosen here alone
(:func:`wrap_step`), so a sharded wrapper can replace it later in one place.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import signal
import sys
import uuid
import warnings

import attrs
import torch
import torch.distributed as dist
from torch import nn

from tlplug.errors import TlplugError

#: How long a process waits for the others at a collective before the run stops with an
#: error (``TLPLUG_DIST_TIMEOUT`` seconds overrides it).
TIMEOUT_S = 600


@attrs.frozen
class World:
    """This process's place among the processes that train one run together."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory and prints (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether other processes train the same run."""
        return self.size > 1

    def per_process(self, batch_size: int) -> int:
        """This process's share of a global batch of ``batch_size`` images."""
        if batch_size % self.size:
            raise TlplugError(
                f"--batch-size {batch_size} is the global batch and does not split evenly "
                f"over {self.size} processes; give a multiple of {self.size}"
            )
        return batch_size // self.size

    def sum(self, values: list[float]) -> list[float]:
        """``values`` added up over every process (each must call it)."""
        if not self.parallel:
            return values
        return self.add_up(torch.tensor(values, dtype=torch.float64)).tolist()

    def add_up(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (on the CPU) added up over every process (each must call it)."""
        if not self.parallel:
            return tensor
        sent = tensor.to(_backend_device())
        dist.all_reduce(sent)
        return sent.cpu()

    def share_rows(self, tensor: torch.Tensor, bounds: list[tuple[int, int]]) -> None:
        """Fill ``tensor`` (on the CPU) everywhere with each process's rows: process ``r``
        computed rows ``bounds[r]`` and sends them to the others (each must call it)."""
        if not self.parallel:
            return
        device, step = _backend_device(), _rows_per_piece(tensor)
        for rank, (low, high) in enumerate(bounds):
            for start in range(low, high, step):
                piece = tensor[start : min(high, start + step)]
                raw = piece.reshape(len(piece), -1).view(torch.uint8)  # any dtype, as bytes
                sent = raw.to(device)  # raw itself on the CPU: broadcast in place
                dist.broadcast(sent, src=rank)
                if sent is not raw:
                    raw.copy_(sent.cpu())

    def bounds(self, count: int) -> list[tuple[int, int]]:
        """Where each process's contiguous part of ``count`` items starts and ends."""
        return [(count * r // self.size, count * (r + 1) // self.size) for r in range(self.size)]


SOLO = World()


def current() -> World:
    """The world this process trains in: the process group it joined, or :data:`SOLO`."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return SOLO


def join(device: torch.device) -> World:
    """Join the process group torchrun set up for this process (once; later calls return
    the same world). Outside torchrun, :data:`SOLO`."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return SOLO
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        timeout = datetime.timedelta(
            seconds=float(os.environ.get("TLPLUG_DIST_TIMEOUT", TIMEOUT_S))
        )
        dist.init_process_group(backend, timeout=timeout)
    return current()


def local_device(device: torch.device, world: World) -> torch.device:
    """The GPU of this process (``cuda:LOCAL_RANK``) when ``device`` is CUDA and several
    processes train; ``device`` otherwise."""
    if device.type == "cuda" and world.parallel:
        return torch.device("cuda", world.local_rank)
    return device


def wrap_step(module: nn.Module, world: World) -> nn.Module:
    """``module`` (a stage's training step, :class:`~tlplug.train.step.StepForward`) as the
    processes train it together: wrapped in DistributedDataParallel over the parameters
    that train now, so each backward pass averages their gradients over the processes.
    Built again at every stage boundary: DDP fixes its parameters when it is made. A
    world of one, or a stage that trains nothing, runs ``module`` as it is."""
    if not world.parallel or not any(p.requires_grad for p in module.parameters()):
        return module
    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    # A 1x1 convolution's weight in channels-last has the same memory order as the
    # contiguous gradient DDP compares it with; its warning about strides is not a cost.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Buffers (BatchNorm statistics) are made alike by the run itself, not at every forward.
    ddp = nn.parallel.DistributedDataParallel
    quiet = "forward_sync_buffers" in inspect.signature(ddp).parameters
    buffers = {"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}
    return ddp(module, device_ids=ids, **buffers)


def launch(processes: int, args: list[str]) -> None:
    """Run ``python -m tlplug ARGS`` in ``processes`` processes on this machine, as
    ``torchrun --standalone --nproc_per_node PROCESSES -m tlplug ARGS`` would (a free port,
    so runs on one host do not clash), through torch.distributed's launcher API. A process
    that fails stops the others; its own error line names its rank, and the launch raises
    one :class:`TlplugError` saying which process failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"tlplug-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    if "OMP_NUM_THREADS" not in os.environ:  # the cores shared, as torchrun would not
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    agent_logs = logging.getLogger("torch.distributed.elastic")
    level, agent_logs.level = agent_logs.level, logging.CRITICAL  # each process says its own error
    try:
        elastic_launch(config, sys.executable)("-m", "tlplug", *args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = f"exit code {failure.exitcode}"
        if failure.exitcode < 0:
            how = f"signal {signal.Signals(-failure.exitcode).name}"
        raise TlplugError(
            f"process rank {rank} of {processes} failed ({how}); the others were stopped"
        ) from None
    finally:
        agent_logs.level = level


def _rows_per_piece(tensor: torch.Tensor, piece_bytes: int = 256 * 2**20) -> int:
    row = max(1, tensor[0].numel() * tensor.element_size()) if len(tensor) else 1
    return max(1, piece_bytes // row)


def _backend_device() -> torch.device:
    """Where the process group's collectives take tensors: the GPU for NCCL, else the CPU."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
