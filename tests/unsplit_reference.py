"""The other side of the one-client equivalence anchor, shared by the equivalence tests: the unsplit model
trained in one process on one client's batches, with the run's optimiser."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slperf.common.models import build_model
from slperf.common.paradigms.kit.steps import make_optimizer


def unsplit_training(config, data) -> dict[str, torch.Tensor]:
    """The final weights of the unsplit model after ``config.epochs`` passes over ``data.train`` (ClientData)."""
    model = build_model(config.model, data.input_shape, data.num_classes, config.seed)
    optimizer = make_optimizer(model.parameters(), config)
    for rnd in range(config.epochs):
        model.train()
        for x, y in data.train.batches(rnd):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.state_dict()
