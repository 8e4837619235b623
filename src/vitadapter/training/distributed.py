"""Training over several processes started by ``torchrun``: batch norms whose statistics span
every process.

The process group and its small collectives are :mod:`vitadapter.distributed`'s (NCCL with one
GPU per process, gloo on CPU); gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


class ProcessGroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batches of all processes
    together (two differentiable all-reduces: the sums, then the squared deviations), on any
    backend; ``torch.nn.SyncBatchNorm`` does the same on GPUs only. Eval mode, or a single
    process, is plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        channels = x.shape[1]
        dims = (0, 2, 3)
        count = x.new_tensor([x.numel() // channels])
        sums = _all_reduce(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centred = x - mean.view(1, -1, 1, 1)
        var = _all_reduce((centred * centred).sum(dims)) / total
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over the processes (its backward sums the gradients)."""
    with warnings.catch_warnings():  # deprecated for the functional collectives, still kept
        warnings.simplefilter("ignore", FutureWarning)
        return dist_fn.all_reduce(tensor)


def sync_batchnorms(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``model`` (the adapter's spatial prior module and norm1..4, as the
    official SyncBN) made to normalise over all processes; the state dict keys stay."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = ProcessGroupBatchNorm2d
    return model
