"""What crosses a model's cuts, per sample: the shapes a paradigm's exchange declares.

Both halves of a paradigm declare the same exchange from the run config, so the shapes are computed from the
model the config names, once per model/cut (a forward pass of one zero sample), not once per client.
"""

from __future__ import annotations

import functools

from slperf.common.models import build_split


@functools.cache
def cut_shapes(
    model: str, input_shape: tuple[int, ...], num_classes: int, seed: int, cuts: tuple[int, ...]
) -> tuple[tuple[int, ...], ...]:
    """The per-sample shape of the tensor leaving each segment but the last."""
    return tuple(build_split(model, input_shape, num_classes, seed, list(cuts)).cut_shapes)
