"""What crosses a model's cuts, per sample: the shapes a paradigm's exchange declares.

Both halves of a paradigm declare the same exchange from the run config, so the shapes are computed from the
model the config names, once per model/cut (a forward pass of one zero sample), not once per client.
"""

from __future__ import annotations

import functools

from torch import nn

from slperf.common.models import build_split
from slperf.common.protocol.exchange import SegmentLayout, TensorLayout


@functools.cache
def cut_shapes(
    model: str, input_shape: tuple[int, ...], num_classes: int, seed: int, cuts: tuple[int, ...]
) -> tuple[tuple[int, ...], ...]:
    """The per-sample shape of the tensor leaving each segment but the last."""
    return tuple(build_split(model, input_shape, num_classes, seed, list(cuts)).cut_shapes)


@functools.cache
def split_layouts(
    model: str, input_shape: tuple[int, ...], num_classes: int, seed: int, cuts: tuple[int, ...]
) -> tuple[tuple[TensorLayout, ...], ...]:
    """The state layout of each segment of the split, in segment order."""
    return tuple(state_layout(s) for s in build_split(model, input_shape, num_classes, seed, list(cuts)).segments)


def state_layout(module: nn.Module) -> tuple[TensorLayout, ...]:
    return tuple(TensorLayout(k, tuple(v.shape), v.dtype) for k, v in module.state_dict().items())


def segment_layout(name: str, layout: tuple[TensorLayout, ...]) -> SegmentLayout:
    return SegmentLayout(name, layout)
