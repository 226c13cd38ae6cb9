"""A paradigm's per-step exchange, declared: which messages cross the cut in each step, with what in them.

Each paradigm states its exchange on its ``ParadigmSpec`` (``exchange(config, client_index)``), and both ends
hold the same declaration: the server's client proxy refuses any cut tensor that does not match the stage it
expects, and the client's link refuses any reply that does not match what it asked for. So the message order
of a paradigm is written in one place, not agreed between three classes, and a foreign implementation can be
checked against it (``slperf paradigms --details NAME`` prints it).

A *step* is one batch. In each step the client sends one ``CutTensor`` per stage, in stage order; after a
stage with a ``down`` spec it waits for the server's ``CutReply``. A stage without ``down`` gets no reply (for
instance the evaluation pass of a paradigm whose server owns the loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
import torch

from slperf.common.protocol.compression import NO_CODEC, Codec
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.types import CutReply, CutTensor, Phase


def wire_name(dtype: torch.dtype) -> str:
    """A dtype as the protocol names it (``int64``, as in ``DTYPE_INT64``), not as torch prints it."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """A batch of tensors with this per-sample shape and one of these dtypes."""

    sample_shape: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    codec: Codec = NO_CODEC  # how the tensor travels (the run config's ``compress``; float32 specs only)

    def check(self, tensor: torch.Tensor, what: str, batch: int | None = None, max_batch: int | None = None) -> int:
        """Refuses (INVALID_ARGUMENT) a tensor of another dtype or per-sample shape, a batch other than ``batch``
        or outside 1..``max_batch``; returns the batch size."""
        if tensor.dtype not in self.dtypes:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{what} has dtype {wire_name(tensor.dtype)}, expected {' or '.join(map(wire_name, self.dtypes))}",
            )
        shape = tuple(tensor.shape)
        if len(shape) != 1 + len(self.sample_shape) or shape[1:] != self.sample_shape:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{what} has shape {list(shape)}, expected [batch, {', '.join(map(str, self.sample_shape))}]",
            )
        if batch is not None and shape[0] != batch:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} holds {shape[0]} samples, expected {batch}")
        if max_batch is not None and not 1 <= shape[0] <= max_batch:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"batch of {shape[0]} samples; must be 1..{max_batch}")
        return shape[0]

    def describe(self) -> str:
        dtypes = "|".join(map(wire_name, self.dtypes))
        codec = f" as {self.codec.name()}" if self.codec.compressed else ""
        return f"{dtypes}[batch, {', '.join(map(str, self.sample_shape))}]{codec}"


@dataclass(frozen=True)
class Stage:
    """One client -> server message of a step, and the server's reply to it (if any)."""

    up: TensorSpec
    down: TensorSpec | None = None
    name: str = ""  # the StepRef.stage of both messages
    labels: bool = False  # labels travel up with the tensor (the server owns the loss); else they must not
    sample_ids: bool = False  # sample ids travel up (parties must agree on the batch's samples)
    extra_up: Mapping[str, TensorSpec] = field(default_factory=dict)
    extra_down: Mapping[str, TensorSpec] = field(default_factory=dict)
    down_optional: bool = False  # the server may withhold the reply's tensor (async SL's state B)

    def describe(self) -> str:
        up = (
            [self.up.describe()]
            + (["labels int64[batch]"] if self.labels else [])
            + (["sample_ids int64[batch]"] if self.sample_ids else [])
            + [f"{k} {v.describe()}" for k, v in self.extra_up.items()]
        )
        if self.down is None:
            down = "no reply"
        else:
            down = self.down.describe() + (" or none" if self.down_optional else "") + " + loss/correct/count"
            down += "".join(f", {k} {v.describe()}" for k, v in self.extra_down.items())
        return f"{self.name or 'step'}: up {', '.join(up)}; down {down}"


@dataclass(frozen=True)
class TensorLayout:
    """One tensor of a segment's state, as a ModelState carries it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class SegmentLayout:
    """A model segment the client holds, by the name ModelState and RequestWeights use for it: every tensor of its
    state, in order. A foreign client builds its segment to this layout; weights of another layout are refused."""

    name: str
    tensors: tuple[TensorLayout, ...]

    def describe(self) -> str:
        count = sum(_numel(t.shape) for t in self.tensors)
        return f"segment {self.name}: {len(self.tensors)} tensors, {count} values"


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


@dataclass(frozen=True)
class Exchange:
    """Everything that crosses the cut for one client: the stages of a training step and of an evaluation step,
    and the segments whose weights travel as ModelState."""

    train: tuple[Stage, ...]
    eval: tuple[Stage, ...]
    num_classes: int
    max_batch: int  # training batch size
    max_eval_batch: int
    segments: tuple[SegmentLayout, ...] = ()

    def stages(self, phase: Phase) -> tuple[Stage, ...]:
        return self.train if phase is Phase.TRAIN else self.eval

    def stage(self, phase: Phase, name: str) -> Stage:
        for stage in self.stages(phase):
            if stage.name == name:
                return stage
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"no {phase.name.lower()} stage named {name!r} in this paradigm's exchange",
        )

    def batch_limit(self, phase: Phase) -> int:
        return self.max_batch if phase is Phase.TRAIN else self.max_eval_batch

    def describe(self) -> list[str]:
        return (
            [f"train {s.describe()}" for s in self.train]
            + [f"eval {s.describe()}" for s in self.eval]
            + [s.describe() for s in self.segments]
        )

    # -- validation, one function per direction ------------------------------------------------------------------
    def check_up(self, message: CutTensor, stage: Stage) -> None:
        """What the server checks of a cut tensor that arrived for ``stage`` (the step itself is checked by the
        caller, who knows which step it expects)."""
        limit = self.batch_limit(message.ref.phase)
        batch = stage.up.check(message.tensor, "cut tensor", max_batch=limit)
        if message.arrived is not None:
            stage.up.codec.check_arrived(message.arrived, tuple(message.tensor.shape), "cut tensor")
        labels = message.labels
        if stage.labels:
            if labels is None:
                raise WireError(
                    grpc.StatusCode.INVALID_ARGUMENT, "cut tensor carries no labels; this paradigm needs them"
                )
            if labels.dtype != torch.int64 or tuple(labels.shape) != (batch,):
                raise WireError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"labels must be int64 of shape [{batch}], got {wire_name(labels.dtype)} {list(labels.shape)}",
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"labels must be in 0..{self.num_classes - 1}")
        elif labels is not None:
            raise WireError(grpc.StatusCode.PERMISSION_DENIED, "labels must not leave the client in this paradigm")
        ids = message.sample_ids
        if stage.sample_ids and ids is None:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT, "cut tensor carries no sample_ids; this paradigm needs them"
            )
        if ids is not None and (ids.dtype != torch.int64 or tuple(ids.shape) != (batch,)):
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"sample_ids must be int64 of shape [{batch}], got {wire_name(ids.dtype)} {list(ids.shape)}",
            )
        _check_extra(message.extra, stage.extra_up, "cut tensor", batch)

    def check_down(self, reply: CutReply, stage: Stage, batch: int) -> None:
        """What the client checks of the server's reply to the ``batch`` samples it sent for ``stage``."""
        if stage.down is None:
            raise WireError(grpc.StatusCode.FAILED_PRECONDITION, f"stage {stage.name!r} expects no reply")
        if reply.tensor is None:
            if not stage.down_optional:
                raise WireError(grpc.StatusCode.INVALID_ARGUMENT, "reply carries no tensor; this stage needs one")
        else:
            stage.down.check(reply.tensor, "reply tensor", batch=batch)
            if reply.arrived is not None:
                stage.down.codec.check_arrived(reply.arrived, tuple(reply.tensor.shape), "reply tensor")
        if not 0 <= reply.correct <= batch or reply.count > batch:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"reply counts {reply.correct} correct of {reply.count} for a batch of {batch}",
            )
        _check_extra(reply.extra, stage.extra_down, "reply", batch)


def with_compression(exchange: Exchange, up: Codec, down: Codec) -> Exchange:
    """``exchange`` with ``up`` on every stage's cut tensor and ``down`` on every reply tensor, where that tensor is
    float32 (a codec compresses float32 only; an integer cut tensor, such as token ids, stays as it is). Labels,
    sample ids, extra tensors and weights are never compressed."""

    def coded(spec: TensorSpec | None, codec: Codec) -> TensorSpec | None:
        if spec is None or spec.dtypes != (torch.float32,):
            return spec
        return dataclasses.replace(spec, codec=codec)

    def stage(s: Stage) -> Stage:
        up_spec = coded(s.up, up)
        assert up_spec is not None
        return dataclasses.replace(s, up=up_spec, down=coded(s.down, down))

    return dataclasses.replace(
        exchange, train=tuple(stage(s) for s in exchange.train), eval=tuple(stage(s) for s in exchange.eval)
    )


def _check_extra(got: Mapping[str, torch.Tensor], declared: Mapping[str, TensorSpec], what: str, batch: int) -> None:
    unexpected = sorted(set(got) - set(declared))
    missing = sorted(set(declared) - set(got))
    if unexpected or missing:
        raise WireError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} extra tensors do not match the exchange: missing {missing}, unexpected {unexpected}",
        )
    for name, spec in declared.items():
        spec.check(got[name], f"{what} extra '{name}'", batch=batch)
