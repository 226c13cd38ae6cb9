"""What a finished run leaves for split inference: which blocks of the unsplit model each named segment holds,
and building a segment (or the whole model) back from those block ranges and its saved weights.

Every party builds the whole model from the run's seed and keeps its own blocks (see ``slperf.common.models``),
so a segment is fully described by the model's name, the data set's input shape and classes, the seed and its
block range ``[start, end)``. The segment names are the paradigms' own: ``bottom``/``top`` (cut at
``split_layer``) and ``head``/``middle``/``tail`` (U-shaped, cut at ``[split_layer, tail_layer]``). Both the
server and the client daemon derive the ranges with ``segment_blocks`` from the same config, so nothing about
the layout has to cross the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slperf.common.config import RunConfig
from slperf.common.models import build_model
from slperf.common.paradigms.base import InferenceUnsupported
from slperf.common.paradigms.kit.ushaped import ushaped_cuts

__all__ = ["InferenceUnsupported", "ModelFacts", "assemble", "build_segment", "segment_blocks"]

BOTTOM_TOP = frozenset({"bottom", "top"})
USHAPED = frozenset({"head", "middle", "tail"})


@dataclass(frozen=True)
class ModelFacts:
    """What builds the unsplit model again: the registry name, one sample's shape, the classes and the seed."""

    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    seed: int

    def build(self) -> nn.Sequential:
        return build_model(self.model, self.input_shape, self.num_classes, self.seed)


def segment_blocks(
    config: RunConfig, input_shape: Sequence[int], num_classes: int, names: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """The block range of each segment in ``names``; InferenceUnsupported for names no split paradigm uses."""
    wanted = set(names)
    blocks = len(build_model(config.model, input_shape, num_classes, config.seed))
    if wanted <= BOTTOM_TOP:
        cut = config.split_layer
        ranges = {"bottom": (0, cut), "top": (cut, blocks)}
    elif wanted <= USHAPED:
        first, second = ushaped_cuts(config, input_shape, num_classes)
        ranges = {"head": (0, first), "middle": (first, second), "tail": (second, blocks)}
    else:
        raise InferenceUnsupported(f"segments {sorted(wanted)} are not a bottom/top or head/middle/tail split")
    return {name: ranges[name] for name in sorted(wanted)}


def build_segment(facts: ModelFacts, blocks: tuple[int, int], state: Mapping[str, torch.Tensor]) -> nn.Sequential:
    """The segment of blocks ``[start, end)`` with ``state`` loaded (strict), in eval mode."""
    start, end = blocks
    children = list(facts.build().children())
    if not 0 <= start < end <= len(children):
        raise ValueError(f"block range {list(blocks)} is outside model '{facts.model}' ({len(children)} blocks)")
    segment = nn.Sequential(*children[start:end])
    segment.load_state_dict(dict(state), strict=True)
    return segment.eval()


def assemble(segments: Sequence[tuple[tuple[int, int], nn.Sequential]]) -> nn.Sequential:
    """The unsplit model from segments that cover its blocks exactly once, in order (ValueError otherwise)."""
    ordered = sorted(segments, key=lambda item: item[0][0])
    position = 0
    blocks: list[nn.Module] = []
    for (start, end), segment in ordered:
        if start != position:
            raise ValueError(f"the segments do not cover the model: blocks {position}..{start - 1} are missing")
        blocks.extend(segment.children())
        position = end
    return nn.Sequential(*blocks).eval()
