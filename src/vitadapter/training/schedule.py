"""Poly learning-rate schedule with linear warm-up (mmcv 1.x ``PolyLrUpdaterHook``, by iteration).

At iteration i (0 for the first update), for a group whose initial lr is ``base_lr``:
``regular = (base_lr - min_lr) * (1 - i / max_iters) ** power + min_lr``; during warm-up
(i < warmup_iters) the lr is ``regular * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio))``,
afterwards ``regular``. Each group decays from its own initial lr (already multiplied by its
``lr_scale`` by :func:`layer_decay_param_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.optim import Optimizer


@dataclass(frozen=True)
class PolyScheduleConfig:
    """The official recipe's schedule (max_iters: 80k at 896, 160k for ADE20K 640)."""

    max_iters: int = 80000
    power: float = 1.0
    min_lr: float = 0.0
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6


def lr_at(iteration: int, base_lr: float, max_iters: int, power: float = 1.0,
          min_lr: float = 0.0, warmup_iters: int = 1500, warmup_ratio: float = 1e-6) -> float:
    """The learning rate applied at ``iteration`` (0-based)."""
    regular = (base_lr - min_lr) * (1 - iteration / max_iters) ** power + min_lr
    if iteration >= warmup_iters:
        return regular
    return regular * (1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio))


class PolySchedule:
    """Sets every group's ``lr`` for an iteration; call ``apply(optimizer, i)`` before step i.
    The groups' initial lrs are kept in ``initial_lr`` (set on first use, as mmcv does)."""

    def __init__(self, config: PolyScheduleConfig | None = None) -> None:
        self.config = config or PolyScheduleConfig()

    def apply(self, optimizer: Optimizer, iteration: int) -> None:
        cfg = self.config
        for group in optimizer.param_groups:
            base = group.setdefault("initial_lr", group["lr"])
            group["lr"] = lr_at(iteration, base, cfg.max_iters, cfg.power, cfg.min_lr,
                                cfg.warmup_iters, cfg.warmup_ratio)
