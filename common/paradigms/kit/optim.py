"""SGD for the parties' segments without the cost of ``torch.optim`` at start-up.

Every ``torch.optim.Optimizer`` imports ``torch._dynamo`` the first time it is used (``add_param_group`` and
``zero_grad`` are wrapped in ``torch._disable_dynamo``, ``step`` in ``_use_grad_for_differentiable``, which
imports it and calls ``graph_break``): 1.5-2.5 s of CPU in every server and client process, for a compiler
SLPerf never uses. ``SGD`` here holds its parameters and momentum buffers itself and steps them with
``torch.optim.sgd.sgd``, the public functional form that ``torch.optim.SGD.step`` itself calls, so every
update is the same arithmetic, bit for bit (the test proves it against ``torch.optim.SGD``), and its
``state_dict`` has ``torch.optim.SGD``'s layout, so checkpoints load either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import torch
from torch.optim.sgd import sgd


class Optimizer(Protocol):
    """What the paradigms use of an optimiser (``SGD`` below and any ``torch.optim.Optimizer``)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class SGD:
    """SGD with momentum and weight decay over one parameter group (``torch.optim.SGD`` with dampening 0, no
    Nesterov, no maximize, foreach chosen by torch as it does for ``torch.optim.SGD``)."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads: list[torch.Tensor] = [p.grad for p in params if p.grad is not None]
        buffers = [self.momentum_buffers[i] for i in live] if self.momentum else []
        sgd(
            params,
            grads,
            buffers,
            has_sparse_grad=any(g.is_sparse for g in grads),
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        for i, buf in zip(live, buffers):  # the functional form creates the buffers at the first step
            self.momentum_buffers[i] = buf

    # -- torch.optim.SGD's state_dict layout ---------------------------------------------------------------
    def _group(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": 0.0,
            "weight_decay": self.weight_decay,
            "nesterov": False,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": None,
        }

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """``torch.optim``'s view of the hyper-parameters (read-only: a copy; set ``lr`` etc. on the object)."""
        return [{**self._group(), "params": list(self.params)}]

    def state_dict(self) -> dict[str, Any]:
        state = {i: {"momentum_buffer": buf} for i, buf in enumerate(self.momentum_buffers) if buf is not None}
        return {"state": state, "param_groups": [{**self._group(), "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("the optimizer state is for another set of parameters")
        group = groups[0]
        self.lr, self.momentum, self.weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        buffers: list[torch.Tensor | None] = [None] * len(self.params)
        for position, index in enumerate(group["params"]):
            saved = state_dict["state"].get(index, {}).get("momentum_buffer")
            if saved is not None:
                param = self.params[position]
                if saved.shape != param.shape:
                    raise ValueError(f"momentum buffer {index} has shape {list(saved.shape)}, not {list(param.shape)}")
                buffers[position] = saved.detach().to(param.device, param.dtype, copy=True)
        self.momentum_buffers = buffers
