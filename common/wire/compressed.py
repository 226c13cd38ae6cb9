"""Compressed cut tensors on the wire: fp16, bf16, affine int8 and top-k encodings of a float32 tensor.

Only a cut tensor (``CutTensor.tensor``, ``CutReply.tensor``) may travel compressed, and only as the exchange
declares (``slperf.common.protocol.compression``). The layouts are normative in docs/protocol.md 2.5.

Receive path: the payload bytes are read once (as for a plain tensor), viewed with ``numpy.frombuffer`` without a
copy, and turned into the float32 result by vectorised passes into one fresh array (fp16: ``astype``; bf16: the 16
bits placed in the upper half of a uint32 array viewed as float32; int8: q widened into the result, then
``-= zero_point`` and ``*= scale`` in place; top-k: a zero array and one scatter, which widens the k uint32 indices
to intp). That result is the only allocation the size of the tensor.

Encoding: int8 maps each tensor's (or channel's) [min, max] onto -128..127, so every value is restored within half
a scale step; fp16 saturates at +-65504 rather than sending Inf (which the receiver refuses); top-k sends the
``round(F * numel)`` entries of largest magnitude (ties broken by ``torch.topk``) with their flat indices, sorted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch

from slperf.common.protocol.compression import AS_DENSE, Arrived, Codec, Encoding
from slperf.common.protocol.errors import WireError
from slperf.common.wire.codec import (
    BULK_MIN_BYTES,
    DEFAULT_LIMITS,
    TensorLimits,
    all_finite,
    checked_layout,
    decode_tensor,
    encode_tensor,
    nonfinite_message,
    payload,
)
from slperf.v1 import tensor_pb2

__all__ = ["decode_cut", "encode_cut", "quantise_int8"]

_FP16_MAX = 65504.0
_F4 = np.dtype("<f4")
_F2 = np.dtype("<f2")
_U2 = np.dtype("<u2")
_U4 = np.dtype("<u4")
_I1 = np.dtype("i1")
_TINY = float(np.finfo(np.float32).tiny)


def encode_cut(t: torch.Tensor, codec: Codec, bulk: list[memoryview] | None = None) -> tensor_pb2.Tensor:
    """``t`` encoded with ``codec`` (plain ``encode_tensor`` for none). Raises WireError (INVALID_ARGUMENT) for a
    tensor other than float32, which no codec compresses (the exchange declares codecs on float32 specs only)."""
    if not codec.compressed:
        return encode_tensor(t, bulk)
    if t.dtype != torch.float32:
        raise WireError.invalid(f"only float32 tensors can be sent {codec.name()}-compressed, not {t.dtype}")
    x = t.detach().to("cpu").contiguous()
    shape = list(x.shape)
    msg = tensor_pb2.Tensor(
        dtype=tensor_pb2.DTYPE_FLOAT32, shape=shape, encoding=cast(tensor_pb2.TensorEncoding, int(codec.encoding))
    )
    data: np.ndarray
    if codec.encoding is Encoding.FLOAT16:
        data = x.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).numpy().astype(_F2, copy=False)
    elif codec.encoding is Encoding.BFLOAT16:
        data = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).astype(_U2, copy=False)
    elif codec.encoding is Encoding.INT8:
        q, scales, zero_points = quantise_int8(x, codec.per_channel)
        data = q.numpy()
        msg.scales.extend(scales.tolist())
        msg.zero_points.extend(zero_points.tolist())
    else:
        flat = x.reshape(-1)
        k = codec.kept(flat.numel())
        index = torch.topk(flat.abs(), k, sorted=False).indices.sort().values if k else flat.new_empty(0).long()
        data = flat[index].numpy().astype(_F4, copy=False)
        msg.indices = index.numpy().astype(_U4).tobytes()
    if bulk is not None and data.nbytes >= BULK_MIN_BYTES:
        contiguous: Any = np.ascontiguousarray(data)
        bulk.append(memoryview(contiguous).cast("B"))  # the array stays alive as the memoryview's exporter
        msg.attachment = len(bulk)
    else:
        msg.data = data.tobytes()
    return msg


def quantise_int8(x: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine int8 quantisation: (q, scales, zero_points) with ``x ~ scales[c] * (q - zero_points[c])``.

    The [min, max] of the tensor (or of each channel, along dimension 1) spans the 255 steps, so the zero point,
    rounded to an integer, shifts the range by at most half a step and every value is restored within
    ``scale / 2``. A constant range (min == max) uses the scale ``|value| / 127`` (1 for zeros) and zero point 0,
    so it is restored exactly."""
    channels = x.shape[1] if per_channel and x.dim() > 1 else 1
    if x.numel() == 0:
        return x.to(torch.int8), torch.ones(channels), torch.zeros(channels, dtype=torch.int32)
    rows = x.transpose(0, 1).reshape(channels, -1) if channels > 1 else x.reshape(1, -1)
    lo, hi = torch.aminmax(rows.double(), dim=1)
    span = hi - lo
    peak = torch.maximum(lo.abs(), hi.abs())
    constant = span == 0
    scale = torch.where(constant, torch.where(peak > 0, peak / 127, torch.ones_like(peak)), span / 255)
    scale = scale.float().clamp_min(_TINY)  # what travels (float32), and never 0
    zero = torch.where(constant, torch.zeros_like(lo), torch.round(-128 - lo / scale.double())).clamp(-128, 127)
    bshape = [1, channels] + [1] * (x.dim() - 2) if channels > 1 else [1] * max(x.dim(), 1)
    q = torch.round(x / scale.view(bshape) + zero.float().view(bshape)).clamp_(-128, 127).to(torch.int8)
    return q.reshape(x.shape), scale, zero.to(torch.int32)


def decode_cut(
    msg: tensor_pb2.Tensor,
    *,
    name: str = "cut tensor",
    limits: TensorLimits = DEFAULT_LIMITS,
    bulk: Sequence[bytes | memoryview] = (),
) -> tuple[torch.Tensor, Arrived]:
    """A cut tensor, plain or compressed, validated completely and decoded (writable, finite) with how it arrived
    (for the exchange to compare against the codec it declares). Raises WireError (INVALID_ARGUMENT) for a byte
    length that does not match the shape, scales that are not finite and positive, zero points outside
    -128..127, a scale count other than 1 or the channels, top-k indices out of range, unsorted or repeated, more
    entries than elements, fields of another encoding, an unknown encoding, or NaN/Inf in the result."""
    encoding = msg.encoding
    if encoding == tensor_pb2.TENSOR_ENCODING_UNSPECIFIED:
        return decode_tensor(msg, name=name, limits=limits, writable=True, bulk=bulk), AS_DENSE
    try:
        kind = Encoding(encoding)
    except ValueError:
        raise WireError.invalid(f"tensor '{name}': unknown tensor encoding number {encoding}") from None
    spec, shape, numel = checked_layout(msg, name, limits)
    if spec.name != "float32":
        raise WireError.invalid(f"tensor '{name}': a compressed tensor must have dtype float32, not {spec.name}")
    if kind is not Encoding.INT8 and (msg.scales or msg.zero_points):
        raise WireError.invalid(f"tensor '{name}': scales and zero points belong to int8 only")
    if kind is not Encoding.TOPK and msg.indices:
        raise WireError.invalid(f"tensor '{name}': indices belong to topk only")
    data = payload(msg, name, bulk)
    label = kind.name.lower()
    arrived = Arrived(kind)
    if kind is Encoding.FLOAT16 or kind is Encoding.BFLOAT16:
        _check_length(name, label, data, numel * 2, shape)
        if kind is Encoding.FLOAT16:
            out = np.frombuffer(data, dtype=_F2).astype(np.float32)
        else:
            bits = np.empty(numel, dtype=np.uint32)
            bits[...] = np.frombuffer(data, dtype=_U2)
            bits <<= 16
            out = bits.view(np.float32)
    elif kind is Encoding.INT8:
        _check_length(name, label, data, numel, shape)
        scale, zero = _checked_affine(msg, name, shape)
        out = np.empty(shape, dtype=np.float32)
        out[...] = np.frombuffer(data, dtype=_I1).reshape(shape)  # widened into the result, no temporary
        out -= zero
        with np.errstate(over="ignore"):  # a huge scale overflows to Inf, refused below
            out *= scale
        arrived = Arrived(kind, scales=len(msg.scales))
    else:
        out, kept = _scatter_topk(msg, name, data, numel)
        arrived = Arrived(kind, kept=kept)
    tensor = torch.from_numpy(out).view(shape)
    if numel and not all_finite(tensor):
        raise WireError.invalid(nonfinite_message(name, f"{label}-decoded float32", tensor))
    return tensor, arrived


def _check_length(name: str, label: str, data: bytes | memoryview, need: int, shape: tuple[int, ...]) -> None:
    if len(data) != need:
        raise WireError.invalid(
            f"tensor '{name}': {label} data has {len(data)} bytes, shape {list(shape)} needs {need}"
        )


def _checked_affine(msg: tensor_pb2.Tensor, name: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """The scales and zero points as float32 arrays shaped to broadcast over ``shape`` (after checking them)."""
    count = len(msg.scales)
    channels = shape[1] if len(shape) > 1 else 1
    if count not in (1, channels):
        raise WireError.invalid(
            f"tensor '{name}': int8 carries {count} scales; a tensor of shape {list(shape)} has 1 (per tensor) or "
            f"{channels} (per channel, dimension 1)"
        )
    if len(msg.zero_points) != count:
        raise WireError.invalid(f"tensor '{name}': int8 carries {count} scales but {len(msg.zero_points)} zero points")
    scales = np.asarray(msg.scales, dtype=np.float32)
    bad = ~(np.isfinite(scales) & (scales > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise WireError.invalid(
            f"tensor '{name}': int8 scale {first} is {scales[first]}; scales must be finite and > 0"
        )
    zeros = np.asarray(msg.zero_points, dtype=np.int64)
    off = (zeros < -128) | (zeros > 127)
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise WireError.invalid(f"tensor '{name}': int8 zero point {first} is {zeros[first]}; must be in -128..127")
    if count == 1 or len(shape) < 2:
        return scales.reshape(()) if count == 1 else scales, zeros.astype(np.float32).reshape(())
    bshape = (1, channels) + (1,) * (len(shape) - 2)
    return scales.reshape(bshape), zeros.astype(np.float32).reshape(bshape)


def _scatter_topk(msg: tensor_pb2.Tensor, name: str, data: bytes | memoryview, numel: int) -> tuple[Any, int]:
    raw = msg.indices  # read once (upb copies the field on every access)
    if len(raw) % 4:
        raise WireError.invalid(f"tensor '{name}': topk indices have {len(raw)} bytes, not a multiple of 4 (uint32)")
    kept = len(raw) // 4
    if kept > numel:
        raise WireError.invalid(f"tensor '{name}': topk carries {kept} indices for {numel} elements")
    if len(data) != kept * 4:
        raise WireError.invalid(f"tensor '{name}': topk data has {len(data)} bytes, {kept} indices need {kept * 4}")
    index = np.frombuffer(raw, dtype=_U4)
    if kept:
        if int(index.max()) >= numel:
            raise WireError.invalid(
                f"tensor '{name}': topk index {int(index.max())} is out of range for {numel} elements"
            )
        rising = index[1:] > index[:-1]
        if not rising.all():
            at = int(np.flatnonzero(~rising)[0]) + 1
            raise WireError.invalid(
                f"tensor '{name}': topk indices must be strictly increasing (sorted, no repeats); index {at} is "
                f"{int(index[at])} after {int(index[at - 1])}"
            )
    out = np.zeros(numel, dtype=np.float32)
    out[index] = np.frombuffer(data, dtype=_F4)
    return out, kept


def dense_bytes(shape: Sequence[int]) -> int:
    """What the float32 tensor of ``shape`` takes uncompressed (for figures)."""
    return 4 * math.prod(shape)


class ErrorFeedback:
    """The sender's error-feedback memory for top-k (``topk:F:ef``): what top-k dropped from the last training
    tensor of each stage is added to the next training tensor of that stage, so a coordinate's small updates add
    up until they are sent instead of being lost. One per sending party and direction (a client's link, the
    server's proxy of one client); its owner clears it at the start of each pass. A batch of another shape (the
    last, short batch of a pass) starts afresh: the residual belongs to the samples' positions in the batch."""

    def __init__(self) -> None:
        self._residual: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self._residual.clear()

    def apply(self, stage: str, tensor: torch.Tensor, codec: Codec) -> torch.Tensor:
        """The tensor to send for ``stage`` (``tensor`` plus the held residual), remembering what top-k will drop
        of it. A codec without error feedback returns ``tensor`` unchanged."""
        if not codec.error_feedback:
            return tensor
        held = self._residual.pop(stage, None)
        x = tensor.detach()
        x = x + held if held is not None and held.shape == x.shape else x.clone()
        flat = x.reshape(-1)
        k = codec.kept(flat.numel())
        dropped = flat.clone()
        if k:
            dropped[torch.topk(flat.abs(), k, sorted=False).indices] = 0
        self._residual[stage] = dropped.view(x.shape)
        return x
