"""One training step as one compiled graph: the forward pass over the images and their mirrors, eq. 8, the backward
pass and Adam's update, replayed every step (``--model.step_graph true``).

At batch 32 on a GPU the Python that issues a step's hundreds of kernels sets the pace, not the device. Compiled with
``fullgraph=True`` the step is one graph (on a GPU, ``mode="reduce-overhead"`` replays it as a CUDA graph):

- the covariance scheduler's value and the learning rate are device tensors the graph reads, written once per epoch
  (a host float would be baked into the graph, and recompile it every epoch);
- Adam's update is written here over ``torch.optim.Adam``'s own state tensors (torch's optimisers break a graph on
  purpose), with its formula, so checkpoints stay Adam's and a run may resume with or without the graph;
- every tensor the graph reads or updates besides its arguments (weights, Adam's state, the meter's sums, the loss
  watch's flag) keeps its memory from step to step: a CUDA graph replays on fixed addresses, records itself again
  when one moves (and after 128 times gives up), and is not captured at all when an input it updates is not marked
  as fixed;
- a step whose loss is not finite changes no weight and no moment (``LossWatch``'s promise), inside the graph;
- the epoch's mechanism sums (:class:`nla.mechanism.MechanismMeter`) are added inside the graph too;
- what callbacks read (probabilities, weights) is copied out of the graph's buffers, which the next replay reuses;
- a batch of another size (the last, short one) runs the same function eagerly: no second graph, no lost sample.
"""

from __future__ import annotations

import types
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from nla.criterion import CriterionOutput


def own_code(method: Any) -> Any:
    """``method`` bound to a copy of its function with a code object of its own. torch.compile keeps a function's
    graphs on its code object, and at most 8 of them: without a copy, every fit of a process (a notebook, the tests)
    would add its own GraphStep's graph to one shared list, and the ninth would fail. A copy's graphs go with it."""
    function = method.__func__
    code, name = function.__code__.replace(), function.__name__
    copy = types.FunctionType(code, function.__globals__, name, function.__defaults__, function.__closure__)
    return types.MethodType(copy, method.__self__)


def trainer_conflicts(
    gradient_clip_val: Optional[float], accumulate_grad_batches: int, precision: Any = None, world_size: int = 1
) -> Optional[str]:
    """Why a trainer with these settings cannot run the graph step, which writes the backward pass and Adam's update
    itself: Lightning's clipping, accumulation and float16 loss scaling would be skipped without a word (the last
    fails on a GPU at the first step), and so would DDP's averaging of the gradients between processes, each of which
    would then train a model of its own. ``None`` when it can."""
    asked = []
    if world_size > 1:
        asked.append(
            f"average gradients between processes (this trainer runs {world_size}: --trainer.devices 1 runs one)"
        )
    if str(precision) in ("16-mixed", "16"):
        asked.append(f"scale the loss for float16 (--trainer.precision {precision}; bf16-mixed needs no scaling)")
    if gradient_clip_val:
        asked.append(f"clip gradients (--trainer.gradient_clip_val {gradient_clip_val})")
    if accumulate_grad_batches != 1:
        them = "them" if gradient_clip_val else "gradients"
        asked.append(f"accumulate {them} (--trainer.accumulate_grad_batches {accumulate_grad_batches})")
    if not asked:
        return None
    return (
        "--model.step_graph true writes each step's backward pass and Adam's update itself and does not "
        f"{' or '.join(asked)}: drop {'those settings' if len(asked) > 1 else 'that setting'} or the graph step"
    )


def trainer_conflict(trainer: Any) -> Optional[str]:
    """:func:`trainer_conflicts` of a Trainer: why it cannot run the graph step, or ``None``."""
    settings = (trainer.gradient_clip_val, trainer.accumulate_grad_batches, trainer.precision)
    return trainer_conflicts(*settings, world_size=trainer.world_size)


class StepResult(NamedTuple):
    """What a step gives the loop: the criterion's output (copied out of the graph) and whether it updated."""

    output: CriterionOutput
    finite: Tensor


class GraphStep:
    """The training step of ``module`` (an :class:`nla.module.NLAModule`) with ``optimizer`` (its Adam), compiled
    once with ``backend`` and ``mode`` for batches of ``batch_size`` images."""

    def __init__(self, module: Any, optimizer: torch.optim.Optimizer, backend: str, mode: Optional[str]) -> None:
        if not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) != 1:
            raise ValueError("the graph step writes Adam's update itself: it needs one torch.optim.Adam param group")
        self.module = module
        group = optimizer.param_groups[0]
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("the graph step writes plain Adam's update: amsgrad and maximize are off")
        self.params = [p for p in group["params"] if p.requires_grad]
        device = self.params[0].device
        self.lr = torch.zeros((), device=device)
        self.schedule = torch.zeros((), device=device)
        # What the graph reads of Adam is taken now: inside it, reading the optimiser's param group would guard on
        # every value there, the learning rate the scheduler changes each epoch included (a recompile per epoch).
        # The state tensors it updates in place are marked as fixed in memory, as parameters and module buffers are:
        # a CUDA graph skips capture altogether when the step mutates an input that is not.
        self.moments: list[tuple[Tensor, Tensor, Tensor]] = []
        for p in self.params:  # Adam's own state, as its fused kernel keeps it (step on the device)
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] = state["step"].to(device=device, dtype=torch.float32)
            moments = (state["step"], state["exp_avg"], state["exp_avg_sq"])
            for tensor in moments:
                torch._dynamo.mark_static_address(tensor, guard=False)
            self.moments.append(moments)
        self.betas = tuple(float(beta) for beta in group["betas"])
        self.eps, self.weight_decay = float(group["eps"]), float(group["weight_decay"])
        self.batch_size: Optional[int] = None
        self.epoch = 0  # as the criterion sees it: changes only where NAW's warm-up ends (a second graph, then)
        self.compiled = torch.compile(own_code(self.step), fullgraph=True, backend=backend, mode=mode)

    def set_epoch(self, schedule: float, lr: float, epoch: int = 0) -> None:
        """The scheduler's value and the learning rate for this epoch's steps (device writes, no host wait)."""
        self.schedule.fill_(schedule)
        self.lr.fill_(lr)
        warmup = self.module.criterion.config.naw_warmup_epochs
        self.epoch = epoch if epoch < warmup else warmup

    def __call__(self, views: Tensor, labels: Tensor) -> StepResult:
        if self.batch_size is None:
            self.batch_size = len(labels)
        if len(labels) != self.batch_size:  # the epoch's last, short batch: the same step, eagerly
            total, probs, weights, finite, parts = self.step(views, labels)
        else:
            # A new training step: the CUDA graph may reuse the buffers of the last replay's outputs (copied out below).
            torch.compiler.cudagraph_mark_step_begin()
            with torch._dynamo.config.patch(trace_autograd_ops=True):  # the backward pass inside the graph
                total, probs, weights, finite, parts = self.compiled(views, labels)
        # Copied out: a CUDA graph's outputs live in buffers its next replay overwrites.
        output = CriterionOutput(
            total.clone(),
            parts[0].clone(),
            parts[1].clone(),
            None if weights is None else weights.clone(),
            probs.argmax(dim=1) == labels,
            probs.clone(),
            self.schedule,
        )
        return StepResult(output, finite.clone())

    def through(self, optimizer: Any, views: Tensor, labels: Tensor) -> CriterionOutput:
        """The step, called through Lightning's optimiser wrapper as Lightning counts steps (Adam's own step then
        finds no gradient and changes nothing); the criterion's output."""
        stepped: list[StepResult] = []
        optimizer.step(closure=lambda: stepped.append(self(views, labels)))
        return stepped[0].output

    def step(self, views: Tensor, labels: Tensor) -> tuple[Any, ...]:
        """Forward, eq. 8, backward, Adam: the function the graph holds."""
        module = self.module
        output = module.criterion_output(views, labels, schedule=self.schedule, epoch=self.epoch)
        grads = torch.autograd.grad(output.total, self.params, allow_unused=True)
        finite = torch.isfinite(output.total) & (module.loss_watch.flag == 0)
        with torch.no_grad():
            self.adam(grads, finite)
            module.mechanism.update(output)
        weights = None if output.weights is None else output.weights.detach()
        parts = (output.classification.detach(), output.consistency.detach())
        return output.total.detach(), output.probs, weights, finite, parts

    def adam(self, grads: tuple[Optional[Tensor], ...], finite: Tensor) -> None:
        """torch.optim.Adam's update (L2 weight decay added to the gradient, bias-corrected moments), on its state;
        where ``finite`` is false, nothing changes."""
        (beta1, beta2), eps, decay = self.betas, self.eps, self.weight_decay
        for p, grad, (step_count, exp_avg_state, exp_avg_sq_state) in zip(self.params, grads, self.moments):
            if grad is None:
                continue
            step = step_count + 1
            if decay:
                grad = grad + decay * p
            exp_avg = exp_avg_state * beta1 + grad * (1 - beta1)
            exp_avg_sq = exp_avg_sq_state * beta2 + grad * grad * (1 - beta2)
            correction1 = 1 - beta1**step
            correction2 = (1 - beta2**step) ** 0.5
            update = self.lr / correction1 * exp_avg / (exp_avg_sq.sqrt() / correction2 + eps)
            p.copy_(torch.where(finite, p - update, p))
            exp_avg_state.copy_(torch.where(finite, exp_avg, exp_avg_state))
            exp_avg_sq_state.copy_(torch.where(finite, exp_avg_sq, exp_avg_sq_state))
            step_count.copy_(torch.where(finite, step, step_count))
