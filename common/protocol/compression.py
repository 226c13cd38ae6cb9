"""Compression of cut tensors: which codec a direction uses, as the run config names it and the exchange declares it.

A run config says ``compress: {up: int8, down: fp16}``; each paradigm's exchange then carries the codec on every
float32 cut tensor spec of that direction (``with_compression``), so both ends know exactly which encoding must
arrive and refuse any other. The wire side (``slperf.common.wire.codec``) encodes and decodes; this module only
names the codecs and says what a received tensor must look like.

Codec names: ``none``, ``fp16``, ``bf16``, ``int8`` (affine, one scale and zero point per tensor),
``int8:channel`` (one per channel, along dimension 1), ``topk:F`` (the ``F`` share of entries with the largest
magnitudes, 0 < F <= 1) and ``topk:F:ef`` (the same with error feedback: the sender adds what it dropped from a
training tensor to its next training tensor of the same stage).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import grpc

from slperf.common.protocol.errors import WireError


class Encoding(enum.IntEnum):
    """The wire encodings (the numbers are ``tensor_pb2.TensorEncoding``'s)."""

    NONE = 0
    FLOAT16 = 1
    BFLOAT16 = 2
    INT8 = 3
    TOPK = 4


_NAMES = {Encoding.NONE: "none", Encoding.FLOAT16: "fp16", Encoding.BFLOAT16: "bf16", Encoding.INT8: "int8"}
CODEC_CHOICES = ("none", "fp16", "bf16", "int8", "int8:channel", "topk:F", "topk:F:ef")


@dataclass(frozen=True)
class Codec:
    """One direction's compression. ``per_channel`` only for INT8; ``fraction`` and ``error_feedback`` only for
    TOPK (checked by ``__post_init__``, so every Codec is a valid one)."""

    encoding: Encoding = Encoding.NONE
    per_channel: bool = False
    fraction: float = 0.0
    error_feedback: bool = False

    def __post_init__(self) -> None:
        if self.per_channel and self.encoding is not Encoding.INT8:
            raise ValueError("per-channel scales apply to int8 only")
        if self.encoding is Encoding.TOPK:
            if not (math.isfinite(self.fraction) and 0 < self.fraction <= 1):
                raise ValueError(f"topk fraction must be in (0, 1], got {self.fraction}")
        elif self.fraction or self.error_feedback:
            raise ValueError("a fraction and error feedback apply to topk only")

    @property
    def compressed(self) -> bool:
        return self.encoding is not Encoding.NONE

    def name(self) -> str:
        """The config spelling (``int8:channel``, ``topk:0.1:ef``)."""
        if self.encoding is Encoding.TOPK:
            return f"topk:{self.fraction:g}" + (":ef" if self.error_feedback else "")
        return _NAMES[self.encoding] + (":channel" if self.per_channel else "")

    def kept(self, numel: int) -> int:
        """TOPK: how many entries of a tensor of ``numel`` elements travel."""
        return 0 if numel == 0 else min(numel, max(1, round(self.fraction * numel)))

    def check_arrived(self, arrived: Arrived, shape: tuple[int, ...], what: str) -> None:
        """Refuses (INVALID_ARGUMENT) a tensor that arrived otherwise encoded than this codec declares."""
        if arrived.encoding is not self.encoding:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{what} arrived {_label(arrived.encoding)}-encoded; the exchange declares {self.name()}",
            )
        if self.encoding is Encoding.INT8:
            channels = shape[1] if len(shape) > 1 else 1
            want = channels if self.per_channel else 1
            if arrived.scales != want:
                raise WireError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{what} carries {arrived.scales} int8 scales; the exchange declares {self.name()} ({want})",
                )
        if self.encoding is Encoding.TOPK:
            numel = math.prod(shape)
            want = self.kept(numel)
            if arrived.kept != want:
                raise WireError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{what} carries {arrived.kept} of {numel} entries; {self.name()} declares {want}",
                )


def _label(encoding: Encoding) -> str:
    return "topk" if encoding is Encoding.TOPK else _NAMES[encoding]


NO_CODEC = Codec()


@dataclass(frozen=True)
class Arrived:
    """How a received tensor was encoded on the wire (set by the decoder, checked against the exchange's codec):
    the encoding, the number of int8 scales, the number of top-k entries."""

    encoding: Encoding
    scales: int = 0
    kept: int = 0


AS_DENSE = Arrived(Encoding.NONE)


def parse_codec(text: object, key: str = "compress") -> Codec:
    """A codec from its config name; ValueError naming ``key`` and the choices otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"config key '{key}' must be a codec name ({', '.join(CODEC_CHOICES)}), got {text!r}")
    parts = text.strip().lower().split(":")
    head = parts[0]
    simple = {v: k for k, v in _NAMES.items()}
    try:
        if head in simple and len(parts) == 1:
            return Codec(simple[head])
        if head == "int8" and parts[1:] == ["channel"]:
            return Codec(Encoding.INT8, per_channel=True)
        if head == "topk" and len(parts) in (2, 3) and (len(parts) == 2 or parts[2] == "ef"):
            return Codec(Encoding.TOPK, fraction=float(parts[1]), error_feedback=len(parts) == 3)
    except ValueError as exc:
        raise ValueError(f"config key '{key}': {text!r}: {exc}") from None
    raise ValueError(f"config key '{key}' must be one of {', '.join(CODEC_CHOICES)}, got {text!r}")
