"""The model registry (`MODELS`, `register_model`, `build_model`) and cutting a model into per-party segments.

Every party builds the *whole* model from the run's seed and keeps only its own blocks. That makes the
initial weights of a split model identical to the unsplit one, which is what lets the tests prove that
split training with one client equals single-process training. The built-in models and the factory
signature (`ModelFactory`) are in model_zoo.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slperf.common.config import ConfigError
from slperf.common.model_zoo import BUILTIN_MODELS, ModelFactory

# The registry starts with the built-in zoo; a study adds its own with register_model.
MODELS: dict[str, ModelFactory] = dict(BUILTIN_MODELS)


def register_model(name: str, factory: ModelFactory) -> None:
    MODELS[name] = factory


_SEEDING = threading.RLock()  # re-entrant: a factory may build a sub-model with seeded() itself


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global RNG seeded with ``seed`` inside the block, its state restored after, one block at a time.

    The global RNG is the process's: parties sharing a process (the simulation: the server builds on its compute
    thread while clients build on the event loop) would otherwise seed and draw from it in interleaved order, and
    a model's initial weights would depend on thread scheduling."""
    with _SEEDING, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Sequential:
    """Builds the unsplit model with weights determined only by ``seed`` (global RNG state untouched)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})") from None
    with seeded(seed):
        return factory(input_shape[0], num_classes, input_shape[-1])


def split_model(model: nn.Sequential, cuts: Sequence[int]) -> list[nn.Sequential]:
    """Cuts a block sequence at the given indices; every segment must keep at least one block."""
    n = len(model)
    bounds = [0, *cuts, n]
    for cut in cuts:
        if not 0 < cut < n:
            raise ConfigError(f"split_layer {cut} is out of range: this model has {n} blocks, so it must be 1..{n - 1}")
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ConfigError(f"cut layers {list(cuts)} leave a segment empty; they must be strictly increasing")
    return [nn.Sequential(*list(model.children())[a:b]) for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class SplitModel:
    """The segments of a cut model plus what crosses the wire between them."""

    segments: list[nn.Sequential]
    cut_shapes: list[tuple[int, ...]]  # per-sample shape of the tensor leaving each segment but the last

    @property
    def cut_elements(self) -> list[int]:
        out = []
        for shape in self.cut_shapes:
            size = 1
            for d in shape:
                size *= d
            out.append(size)
        return out

    def cut_facts(self) -> dict[str, Any]:
        """What crosses the first cut per sample, as the run summary reports it."""
        return {
            "cut_shape_per_sample": list(self.cut_shapes[0]),
            "cut_floats_per_sample": self.cut_elements[0],
            "cut_bytes_per_sample_fp32": 4 * self.cut_elements[0],
        }


def build_split(name: str, input_shape: Sequence[int], num_classes: int, seed: int, cuts: Sequence[int]) -> SplitModel:
    model = build_model(name, input_shape, num_classes, seed)
    segments = split_model(model, cuts)
    shapes: list[tuple[int, ...]] = []
    with torch.no_grad():
        x = torch.zeros(1, *input_shape)
        for seg in segments[:-1]:
            was_training = seg.training
            seg.eval()
            x = seg(x)
            seg.train(was_training)
            shapes.append(tuple(x.shape[1:]))
    return SplitModel(segments=segments, cut_shapes=shapes)
