"""Evaluation over several processes started by ``torchrun``: a :class:`Shard` whose sums go
through ``torch.distributed`` (NCCL with one GPU per process, gloo on CPU)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from ..errors import EvaluationError
from .loop import Shard


class TorchShard(Shard):
    """One process of a torch.distributed group; int64 sums are exact on every backend."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    def sum(self, array: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(array, np.int64)).to(self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        dist.destroy_process_group()


def shard_from_environment(device: str | None = None) -> tuple[Shard, str | None]:
    """The process group ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), and the device this process should use:
    ``cuda:LOCAL_RANK`` when CUDA is present (unless ``device`` says cpu), else cpu. A single
    process gets a plain :class:`Shard` and ``device`` unchanged."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Shard(), device
    if device not in (None, "cpu", "cuda"):
        raise EvaluationError(f"--device {device}: under torchrun give 'cuda' or 'cpu'; each "
                              "process takes the GPU of its LOCAL_RANK")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise EvaluationError("--device cuda: CUDA is not available in this process")
    if use_cuda:
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        backend = "nccl"
    else:
        target, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend)
    return TorchShard(rank, world_size, target), str(target)
