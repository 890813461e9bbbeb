"""A non-finite loss or weights: found on the device, acted on by the optimiser, reported by the host.

Asking the device every step whether the loss is finite would make the host wait for it every step, which stalls a
GPU. Instead :class:`LossWatch` notes on the device whether each step's loss is finite; from the first non-finite
one on, the fused Adam skips every update (``found_inf``, the flag by which torch's fused optimisers skip a step, as
``torch.amp.GradScaler`` sets it), so that step changes no weight and neither does any later one. The host looks
(:meth:`LossWatch.check`) every ``log_every_n_steps`` steps, before every validation and before every checkpoint,
and the run stops with the first bad step's epoch, step and loss parts. An optimiser without that flag is checked
on the host every step, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from nla.errors import UserError

RESUME_ADVICE = "Resume with --ckpt_path last and a lower --model.lr"


class NonFiniteError(UserError, FloatingPointError):
    """The loss or the weights became NaN or infinite; raised before anything non-finite is saved."""


class LossWatch(nn.Module):
    """Device-side record of the first training step of a fit whose loss was not finite.

    ``agree``, in a run of several processes, takes the maximum of a tensor over them (one small collective a step,
    no host wait): a step whose loss is not finite in one process is then skipped, and stops the run, in every
    process, as DDP's averaged gradients carry it into all of them. The loss parts recorded are those of the
    process that had it (NaN in the others)."""

    flag: Tensor  # 1.0 once a step of this fit had a non-finite loss
    record: Tensor  # that step's (classification, consistency, epoch, global step)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("flag", torch.zeros(()), persistent=False)
        self.register_buffer("record", torch.zeros(4), persistent=False)
        self.agree: Optional[Callable[[Tensor], Tensor]] = None

    def reset(self) -> None:
        self.flag.zero_()

    def note(self, total: Tensor, parts: Sequence[Tensor], epoch: int, step: int) -> None:
        """Note this step's ``total`` loss (and its two ``parts``) without a host wait."""
        total = total.detach()
        bad = (total - total) != 0  # NaN for NaN and +-inf: two kernels where torch.isfinite and a not take five
        values = [part.detach().float() for part in parts]
        if self.agree is not None:  # another process's loss may be the bad one: this one's parts then read NaN
            values = [torch.where(bad, value, self.flag.new_full((), math.nan)) for value in values]
            bad = self.agree(bad.float()) > 0
        first = torch.gt(bad, self.flag)  # bad, and no earlier step was
        values += [self.flag.new_full((), float(epoch)), self.flag.new_full((), float(step))]
        # In place, not rebound: the graph step reads the flag, and a CUDA graph replays on fixed addresses.
        torch.where(first, torch.stack(values), self.record, out=self.record)
        torch.maximum(self.flag, bad, out=self.flag)

    def observe(self, total: Tensor, parts: Sequence[Tensor], epoch: int, step: int, optimizers: Sequence[Any]) -> None:
        """:meth:`note` this step's loss; hand the flag to fused optimisers, and check on the host at once where an
        optimiser cannot skip a step on the device."""
        self.note(total, parts, epoch, step)
        fused = [optimizer for optimizer in optimizers if optimizer.defaults.get("fused")]
        for optimizer in fused:
            optimizer.found_inf = self.flag
        if len(fused) < len(optimizers) or not optimizers:
            self.check()

    def check(self) -> None:
        """Raise :class:`NonFiniteError` if a step of this fit had a non-finite loss (one host sync)."""
        if self.flag.item():
            classification, consistency, epoch, step = self.record.tolist()
            raise NonFiniteError(
                f"non-finite loss at epoch {int(epoch)}, step {int(step)}: classification={classification:.4g}, "
                f"consistency={consistency:.4g}. The run stops before this step changes any weight; the checkpoints "
                f"already written are kept. {RESUME_ADVICE}"
            )


def check_finite_weights(module: nn.Module, epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteError` when any parameter or buffer of ``module`` is NaN or infinite."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteError(
                f"the weights became non-finite ({name}) at epoch {epoch}, step {step}; they are not evaluated or "
                f"saved, and the last good checkpoint is kept. {RESUME_ADVICE}"
            )
