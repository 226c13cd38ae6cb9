"""What crosses a model's cuts, per sample: the shapes a paradigm's exchange declares.

Both halves of a paradigm declare the same exchange from the run config, so the shapes are computed from the
model the config names, once per model/cut (a forward pass of one zero sample), not once per client; so are the
layouts of the segments whose weights travel.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import nn

from slperf.common.models import build_model, build_split
from slperf.common.protocol.exchange import TensorLayout


@functools.cache
def _split_facts(
    model: str, input_shape: tuple[int, ...], num_classes: int, seed: int, cuts: tuple[int, ...]
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[TensorLayout, ...], ...]]:
    """One build of the split for both facts an exchange declares: its cut shapes and its segments' layouts."""
    split = build_split(model, input_shape, num_classes, seed, list(cuts))
    return tuple(split.cut_shapes), tuple(state_layout(s) for s in split.segments)


def cut_shapes(
    model: str, input_shape: tuple[int, ...], num_classes: int, seed: int, cuts: tuple[int, ...]
) -> tuple[tuple[int, ...], ...]:
    """The per-sample shape of the tensor leaving each segment but the last."""
    return _split_facts(model, input_shape, num_classes, seed, cuts)[0]


def split_layouts(
    model: str, input_shape: tuple[int, ...], num_classes: int, seed: int, cuts: tuple[int, ...]
) -> tuple[tuple[TensorLayout, ...], ...]:
    """The state layout of each segment of the split, in segment order."""
    return _split_facts(model, input_shape, num_classes, seed, cuts)[1]


@functools.cache
def model_layout(model: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[TensorLayout, ...]:
    """The state layout of the whole, unsplit model (the segment of a paradigm whose clients hold all of it)."""
    return state_layout(build_model(model, input_shape, num_classes, seed))


def state_layout(module: nn.Module) -> tuple[TensorLayout, ...]:
    return state_layout_of(module.state_dict())


def state_layout_of(state: Mapping[str, torch.Tensor]) -> tuple[TensorLayout, ...]:
    return tuple(TensorLayout(k, tuple(v.shape), v.dtype) for k, v in state.items())
