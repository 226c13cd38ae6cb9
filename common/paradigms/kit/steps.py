"""Training steps shared by paradigms whose server holds the top of the model and the loss.

These are plain functions over modules and tensors, run by the server off its event loop
(``ctx.compute``) and by the clients inline; keeping them in one place is what makes the one-client
equivalence with single-process training hold for every such paradigm.

Placement happens here too: a step moves the cut tensors it is given (host tensors off the wire) to the
device of the module it runs, and returns the gradient for the wire as a host float32 tensor
(``slperf.common.devices``; both are the tensor itself on a CPU party).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slperf.common.config import RunConfig
from slperf.common.devices import cut_to_host, host_copy, module_device, to_device
from slperf.common.paradigms.kit.optim import SGD, Optimizer


def grad_of(tensor: torch.Tensor) -> torch.Tensor:
    """The gradient ``backward()`` left on ``tensor`` (a cut tensor that required grad); none is a bug."""
    if tensor.grad is None:
        raise RuntimeError("backward() left no gradient on the cut tensor")
    return tensor.grad


class PoisonedStep(ValueError):
    """What the server computed from a client's batch is not finite, or not a loss any model produces (huge
    but finite activations pass the wire's NaN/Inf check and overflow the top): the step is refused, nothing
    is applied, and the paradigm drops the client from the round (``kit.serving``)."""


# Cross-entropy of logits a working model gives is a few units (log(classes) at random initialisation); one far
# above this means the batch's activations are orders of magnitude off, and a step on it would wreck the top.
MAX_PLAUSIBLE_LOSS = 1e4


def check_step(loss: torch.Tensor, cut_grad: torch.Tensor | None, module: nn.Module) -> None:
    """Raises ``PoisonedStep`` (and clears the gradients, so nothing of the batch is left to apply) when the
    loss, the gradient at the cut or any parameter gradient is not finite, or the loss is implausibly large.
    Called after ``backward`` and before any optimiser step, so a refused step leaves the module's weights and
    its optimiser's state untouched."""
    value = float(loss.detach())
    problem = ""
    if not math.isfinite(value):
        problem = f"the loss is non-finite ({value})"
    elif abs(value) > MAX_PLAUSIBLE_LOSS:
        problem = f"the loss is {value:.3g}, beyond any model's (> {MAX_PLAUSIBLE_LOSS:g}): activations far off"
    elif cut_grad is not None and not bool(torch.isfinite(cut_grad).all()):
        problem = "the gradient at the cut is non-finite"
    else:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            problem = "a parameter gradient is non-finite"
    if problem:
        for p in module.parameters():
            p.grad = None
        raise PoisonedStep(f"refused the step: {problem}")


# Where the server holds no loss (the U-shaped middle: the client's tail computes it), a step is judged by its
# gradients. Cross-entropy's gradient at the logits is at most 1 per sample, so an honest model's parameter
# gradients are a few units to a few hundred; one above this bound, applied at any usable learning rate, would
# move the weights by thousands: it only comes from activations orders of magnitude off.
MAX_PLAUSIBLE_GRAD_NORM = 1e6


def check_gradients(module: nn.Module, cut_grad: torch.Tensor | None) -> None:
    """Raises ``PoisonedStep`` (and clears the gradients) when the gradient at the cut or any parameter gradient
    of ``module`` is not finite, or the parameter gradients' norm is implausibly large. For a step whose loss the
    server does not see; called after ``backward`` and before any optimiser step."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    norm = math.sqrt(sum(float(torch.sum(g.detach().double() ** 2)) for g in grads))  # float64: 1e30**2 fits
    problem = ""
    if cut_grad is not None and not bool(torch.isfinite(cut_grad).all()):
        problem = "the gradient at the cut is non-finite"
    elif not math.isfinite(norm):
        problem = "a parameter gradient is non-finite"
    elif norm > MAX_PLAUSIBLE_GRAD_NORM:
        problem = (
            f"the parameter gradients' norm is {norm:.3g}, beyond any model's (> {MAX_PLAUSIBLE_GRAD_NORM:g}): "
            "activations far off"
        )
    if problem:
        for p in module.parameters():
            p.grad = None
        raise PoisonedStep(f"refused the step: {problem}")


def make_optimizer(params: Iterable[torch.Tensor], config: RunConfig, lr: float | None = None) -> SGD:
    """SGD with momentum and weight decay, as SLPerf uses for every paradigm but two (``kit.optim.SGD``: the
    arithmetic of ``torch.optim.SGD`` without its import of ``torch._dynamo``)."""
    return SGD(params, lr=config.lr if lr is None else lr, momentum=config.momentum, weight_decay=config.weight_decay)


@dataclass
class StepOutcome:
    grad: torch.Tensor | None
    loss: float
    correct: int
    count: int


def top_train_step(
    top: nn.Module, optimizer: Optimizer, acts: torch.Tensor, labels: torch.Tensor, *, step: bool = True
) -> StepOutcome:
    """Forward the cut activations through the top, step, and return the gradient for the client."""
    top.train()
    device = module_device(top)
    acts = to_device(acts, device).detach().requires_grad_(True)
    labels = to_device(labels, device)
    optimizer.zero_grad(set_to_none=True)
    logits = top(acts)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    check_step(loss, acts.grad, top)
    if step:
        optimizer.step()
    correct = int((logits.detach().argmax(1) == labels).sum())
    return StepOutcome(cut_to_host(grad_of(acts)), float(loss.detach()), correct, int(labels.shape[0]))


@torch.no_grad()
def top_eval_step(top: nn.Module, acts: torch.Tensor, labels: torch.Tensor) -> StepOutcome:
    top.eval()
    device = module_device(top)
    labels = to_device(labels, device)
    logits = top(to_device(acts, device))
    loss = F.cross_entropy(logits, labels, reduction="sum")
    if not math.isfinite(float(loss)) or float(loss) > MAX_PLAUSIBLE_LOSS * labels.shape[0]:
        raise PoisonedStep(f"refused the evaluation batch: its loss is {float(loss):.3g}")
    correct = int((logits.argmax(1) == labels).sum())
    return StepOutcome(None, float(loss), correct, int(labels.shape[0]))


def top_accumulate(top: nn.Module, acts: torch.Tensor, labels: torch.Tensor) -> StepOutcome:
    """Forward one client's batch and add the gradient of its loss to the top's (no step): lock-step
    paradigms sum several clients' losses into one step.

    The batch's gradients are computed apart (``autograd.grad``) and checked before they are added, so a
    refused batch (``PoisonedStep``) leaves the gradients the other clients' batches accumulated untouched.
    The sum is the same as ``backward`` accumulating: each parameter's gradient is the previous one plus this
    batch's.
    """
    top.train()
    device = module_device(top)
    acts = to_device(acts, device).detach().requires_grad_(True)
    labels = to_device(labels, device)
    logits = top(acts)
    loss = F.cross_entropy(logits, labels)
    value = float(loss.detach())
    if not math.isfinite(value) or abs(value) > MAX_PLAUSIBLE_LOSS:
        raise PoisonedStep(f"refused the batch: its loss is {value:.3g}")
    params = [p for p in top.parameters() if p.requires_grad]
    cut_grad, *grads = torch.autograd.grad(loss, [acts, *params], allow_unused=True)
    if cut_grad is None or not bool(torch.isfinite(cut_grad).all()):
        raise PoisonedStep("refused the batch: the gradient at the cut is non-finite")
    if not all(g is None or bool(torch.isfinite(g).all()) for g in grads):
        raise PoisonedStep("refused the batch: a parameter gradient is non-finite")
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    correct = int((logits.detach().argmax(1) == labels).sum())
    return StepOutcome(cut_to_host(cut_grad), value, correct, int(labels.shape[0]))


def zero_grads(optimizer: Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)


def optimizer_step(optimizer: Optimizer) -> None:
    optimizer.step()


def backward_from(tensor: torch.Tensor, grad: torch.Tensor) -> None:
    """Back-propagates ``grad`` (the gradient of the loss at ``tensor``, same shape) into ``tensor``'s graph.

    The same gradients as ``tensor.backward(grad)``, bit for bit: the backward of ``sum(tensor * grad)`` hands
    ``tensor`` exactly ``1.0 * grad``. It is spelt this way because ``backward`` with an explicit gradient imports
    ``torch.fx.experimental.symbolic_shapes`` (and sympy: 0.5-0.7 s of CPU per process) to compare the shapes;
    a scalar's backward does not. The shapes are compared here instead.
    """
    if grad.shape != tensor.shape:
        raise ValueError(f"a gradient of shape {list(grad.shape)} for a tensor of shape {list(tensor.shape)}")
    torch.sum(tensor * grad.detach()).backward()


def bottom_backward_step(
    acts: torch.Tensor, grad: torch.Tensor, optimizer: Optimizer, penalty: torch.Tensor | None = None
) -> None:
    """Back-propagates the gradient the server sent (a host tensor) through ``acts`` (on the party's device), plus
    the gradient of the client's own ``penalty`` term (a defense's, e.g. NoPeek's), in one backward pass."""
    optimizer.zero_grad(set_to_none=True)
    grad = to_device(grad, acts.device)
    if penalty is None:
        backward_from(acts, grad)
    else:
        if grad.shape != acts.shape:
            raise ValueError(f"a gradient of shape {list(grad.shape)} for a tensor of shape {list(acts.shape)}")
        (torch.sum(acts * grad.detach()) + penalty).backward()
    optimizer.step()


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A host copy of the module's state (what the server keeps, averages and sends; unchanged by training)."""
    return host_copy(module)


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copies into the module's existing tensors, so optimisers keep pointing at the live parameters
    (SLPerf replaced the module object and left its optimiser stepping the old one)."""
    module.load_state_dict(state, strict=True)
