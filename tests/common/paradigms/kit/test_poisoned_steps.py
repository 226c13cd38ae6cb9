"""The server checks what it computes from a client's batch: a step whose loss or gradients are not finite, or
whose loss no model produces (huge finite activations), is refused before anything is applied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slperf.common.paradigms.kit.optim import SGD
from slperf.common.paradigms.kit.steps import PoisonedStep, top_accumulate, top_eval_step, top_train_step


def _top() -> tuple[nn.Module, SGD]:
    torch.manual_seed(0)
    top = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return top, SGD(top.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _snapshot(top: nn.Module, optimizer: SGD) -> tuple[dict[str, torch.Tensor], str]:
    return {k: v.clone() for k, v in top.state_dict().items()}, repr(optimizer.state_dict())


@pytest.mark.parametrize("scale", [1e30, float("inf")])
def test_a_poisoned_batch_is_refused_and_leaves_the_top_and_its_optimiser_untouched(scale):
    top, optimizer = _top()
    labels = torch.tensor([0, 1, 2, 3])
    top_train_step(top, optimizer, torch.randn(4, 8), labels)  # an honest step first: momentum exists
    before, opt_before = _snapshot(top, optimizer)
    with pytest.raises(PoisonedStep, match="refused"):
        top_train_step(top, optimizer, torch.randn(4, 8) * scale, labels)
    after, opt_after = _snapshot(top, optimizer)
    assert all(torch.equal(before[k], after[k]) for k in before) and opt_before == opt_after
    assert all(p.grad is None for p in top.parameters())
    out = top_train_step(top, optimizer, torch.randn(4, 8), labels)  # and honest steps go on
    assert out.grad is not None and bool(torch.isfinite(out.grad).all())


def test_accumulation_and_evaluation_refuse_poisoned_batches_too():
    top, _ = _top()
    labels = torch.tensor([0, 1, 2, 3])
    with pytest.raises(PoisonedStep):
        top_accumulate(top, torch.randn(4, 8) * 1e30, labels)
    assert all(p.grad is None for p in top.parameters())  # nothing accumulated
    with pytest.raises(PoisonedStep):
        top_eval_step(top, torch.randn(4, 8) * 1e30, labels)
    assert top_eval_step(top, torch.randn(4, 8), labels).count == 4


def test_a_refused_batch_leaves_what_other_batches_accumulated_untouched():
    top, _ = _top()
    labels = torch.tensor([0, 1, 2, 3])
    top_accumulate(top, torch.randn(4, 8), labels)  # an honest client's batch of this lock-step step
    before = [p.grad.clone() for p in top.parameters()]
    with pytest.raises(PoisonedStep):
        top_accumulate(top, torch.randn(4, 8) * 1e30, labels)
    assert all(torch.equal(b, p.grad) for b, p in zip(before, top.parameters()))
