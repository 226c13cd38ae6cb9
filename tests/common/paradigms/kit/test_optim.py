"""Start-up cost: the kit's SGD is torch.optim.SGD's arithmetic bit for bit and keeps its state_dict layout
(checkpoints load either way), ``backward_from`` is ``backward(grad)`` bit for bit, and a party's set-up and first
step import neither torch._dynamo (1.5-2.5 s per process) nor sympy (0.5-0.7 s)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from slperf.common.models import build_model
from slperf.common.paradigms.kit.optim import SGD
from slperf.common.paradigms.kit.steps import backward_from


def _train(make, steps: int = 6) -> tuple[dict, object]:
    model = build_model("lenet", (1, 28, 28), 10, seed=2)
    optimizer = make(model.parameters())
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.state_dict(), optimizer


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.0)])
def test_the_kit_sgd_is_torch_sgd_bit_for_bit(momentum, weight_decay):
    ours, mine = _train(lambda p: SGD(p, lr=0.05, momentum=momentum, weight_decay=weight_decay))
    theirs, torch_opt = _train(lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum, weight_decay=weight_decay))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    if momentum:
        mine_state, torch_state = mine.state_dict(), torch_opt.state_dict()
        assert mine_state["param_groups"][0]["params"] == torch_state["param_groups"][0]["params"]
        for index, entry in torch_state["state"].items():
            assert torch.equal(mine_state["state"][index]["momentum_buffer"], entry["momentum_buffer"])


def test_state_dicts_load_both_ways_and_a_foreign_one_is_refused():
    _, mine = _train(lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4))
    model = build_model("lenet", (1, 28, 28), 10, seed=2)
    torch_opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    torch_opt.load_state_dict(mine.state_dict())
    fresh = SGD(model.parameters(), lr=0.01, momentum=0.9)
    fresh.load_state_dict(torch_opt.state_dict())
    assert fresh.lr == 0.05 and fresh.weight_decay == 5e-4
    assert all(b is not None for b in fresh.momentum_buffers)
    other = SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another set of parameters"):
        other.load_state_dict(mine.state_dict())


def test_backward_from_a_cut_gradient_is_backward_bit_for_bit():
    grads = []
    for explicit in (True, False):
        model = build_model("lenet", (1, 28, 28), 10, seed=3)[:2]
        acts = model(torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
        grad = torch.randn(acts.shape, generator=torch.Generator().manual_seed(2))
        acts.backward(grad) if explicit else backward_from(acts, grad)
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    with pytest.raises(ValueError, match="a gradient of shape"):
        backward_from(acts, grad[:2])


@pytest.mark.slow  # starts a Python process of its own
def test_a_partys_set_up_and_first_steps_import_neither_dynamo_nor_sympy():
    code = (
        "import sys, torch\n"
        "from slperf.common.config import RunConfig\n"
        "from slperf.common.devices import party_placement\n"
        "from slperf.common.paradigms.kit.steps import bottom_backward_step, make_optimizer, top_train_step\n"
        "party_placement(RunConfig())\n"
        "bottom, top = torch.nn.Linear(5, 4), torch.nn.Sequential(torch.nn.Linear(4, 3))\n"
        "opt = make_optimizer(top.parameters(), RunConfig())\n"
        "bottom_opt = make_optimizer(bottom.parameters(), RunConfig())\n"
        "acts = bottom(torch.randn(2, 5))\n"
        "out = top_train_step(top, opt, acts.detach(), torch.tensor([0, 2]))\n"
        "bottom_backward_step(acts, out.grad, bottom_opt)\n"
        "opt.state_dict()\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
