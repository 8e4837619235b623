"""The processes ``torchrun`` starts, as every command sees them.

A :class:`Shard` is this process's place among those sharing a job (alone by default);
:class:`TorchShard` is one process of a ``torch.distributed`` group (NCCL with one GPU per
process, gloo on CPU). :func:`shard_from_environment` joins the group ``torchrun`` describes,
:func:`join_processes` also joins one already initialised in this process; the small
collectives :func:`gather_objects` and :func:`mean_over_processes` do nothing when alone.

torch is imported only where a group is used: ``segment --onnx`` runs without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import VitAdapterError

if TYPE_CHECKING:
    import torch


class Shard:
    """This process's place among the processes sharing a job; alone by default."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, array: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``array`` (int64) over all processes."""
        return array

    def barrier(self) -> None:
        """Wait until every process gets here."""

    def close(self) -> None:
        """Leave the process group."""


class TorchShard(Shard):
    """One process of a torch.distributed group; int64 sums are exact on every backend."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    def sum(self, array: np.ndarray) -> np.ndarray:
        import torch
        import torch.distributed as dist

        tensor = torch.from_numpy(np.ascontiguousarray(array, np.int64)).to(self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        dist.destroy_process_group()


def shard_from_environment(device: str | None = None) -> tuple[Shard, str | None]:
    """The process group ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), and the device this process should use:
    ``cuda:LOCAL_RANK`` when CUDA is present (unless ``device`` says cpu), else cpu. A single
    process gets a plain :class:`Shard` and ``device`` unchanged."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Shard(), device
    import torch
    import torch.distributed as dist

    if device not in (None, "cpu", "cuda"):
        raise VitAdapterError(f"--device {device}: under torchrun give 'cuda' or 'cpu'; each "
                              "process takes the GPU of its LOCAL_RANK")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise VitAdapterError("--device cuda: CUDA is not available in this process")
    if use_cuda:
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        backend = "nccl"
    else:
        target, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend)
    return TorchShard(rank, world_size, target), str(target)


def join_processes(device: str | None) -> tuple[Shard, torch.device]:
    """This process's place among those ``torchrun`` started (a plain :class:`Shard` when
    alone) and its device; joins the group already initialised in this process, if any."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
        target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return TorchShard(dist.get_rank(), dist.get_world_size(), target), target
    shard, name = shard_from_environment(device)
    return shard, torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _joined() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each value over all processes (unchanged when alone)."""
    if not _joined():
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every process, in rank order (``[value]`` when alone)."""
    if not _joined():
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
