"""The paper's optimiser, Adam with L2 weight decay and an ExponentialLR stepped once an epoch, and what a resumed run
takes from the settings it is given now rather than from its checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import torch
from torch import Tensor


def adam_with_decay(
    parameters: Iterable[Tensor], lr: float, weight_decay: float, gamma: float, device: torch.device
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: fused Adam (one kernel for all parameters, and a step it can skip
    on the device) where torch has it, and the learning rate's decay per epoch."""
    fused = device.type in ("cuda", "cpu")
    optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def apply_settings(trainer: Any, old: dict[str, Any], new: Any) -> Optional[str]:
    """Give a resumed run's optimisers and schedulers the learning rate, weight decay and decay it is given now
    (``new``, against the checkpoint's ``old``): the schedule so far is kept and the rate scaled. A note when the rate
    changed."""
    scale = new["lr"] / float(old.get("lr") or new["lr"])
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] *= scale
            group["weight_decay"] = new["weight_decay"]
            if "initial_lr" in group:
                group["initial_lr"] = new["lr"]
    for config in trainer.lr_scheduler_configs:
        config.scheduler.base_lrs = [new["lr"] for _ in config.scheduler.base_lrs]
        if hasattr(config.scheduler, "gamma"):
            config.scheduler.gamma = new["lr_gamma"]
    if scale == 1.0:
        return None
    now = trainer.optimizers[0].param_groups[0]["lr"]
    return f"resumed with lr {new['lr']:g} instead of {float(old['lr']):g}: the learning rate is now {now:.3g}"
