"""Tensor wire codec: raw little-endian C-order bytes + dtype + shape, validated before any allocation.

Decoding is zero-copy (``numpy.frombuffer`` over the received bytes); ``writable=True`` makes exactly one
copy so autograd and in-place optimiser updates may touch the result. Nothing here pickles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import grpc
import numpy as np
import torch

from slperf.common.wire.errors import WireError
from slperf.v1 import tensor_pb2

# dtype table: wire enum <-> torch dtype, plus the numpy dtype used to view the bytes (bfloat16 as int16).
_TABLE = [
    (tensor_pb2.DTYPE_FLOAT32, torch.float32, np.dtype("<f4")),
    (tensor_pb2.DTYPE_FLOAT16, torch.float16, np.dtype("<f2")),
    (tensor_pb2.DTYPE_BFLOAT16, torch.bfloat16, np.dtype("<i2")),
    (tensor_pb2.DTYPE_FLOAT64, torch.float64, np.dtype("<f8")),
    (tensor_pb2.DTYPE_INT64, torch.int64, np.dtype("<i8")),
    (tensor_pb2.DTYPE_INT32, torch.int32, np.dtype("<i4")),
    (tensor_pb2.DTYPE_INT16, torch.int16, np.dtype("<i2")),
    (tensor_pb2.DTYPE_INT8, torch.int8, np.dtype("i1")),
    (tensor_pb2.DTYPE_UINT8, torch.uint8, np.dtype("u1")),
    (tensor_pb2.DTYPE_BOOL, torch.bool, np.dtype("?")),
]
TORCH_TO_WIRE = {t: w for w, t, _ in _TABLE}
WIRE_TO_TORCH = {w: t for w, t, _ in _TABLE}
WIRE_TO_NUMPY = {w: n for w, _, n in _TABLE}
_FLOATS = {tensor_pb2.DTYPE_FLOAT32, tensor_pb2.DTYPE_FLOAT16, tensor_pb2.DTYPE_BFLOAT16, tensor_pb2.DTYPE_FLOAT64}


@dataclass(frozen=True)
class TensorLimits:
    max_elements: int = 1 << 28
    max_dims: int = 8
    allowed: frozenset[int] | None = None


DEFAULT_LIMITS = TensorLimits()


def _invalid(message: str) -> WireError:
    return WireError(grpc.StatusCode.INVALID_ARGUMENT, message)


def encode_tensor(t: torch.Tensor) -> tensor_pb2.Tensor:
    try:
        wire = TORCH_TO_WIRE[t.dtype]
    except KeyError:
        raise ValueError(f"dtype {t.dtype} cannot be sent on the wire") from None
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    data = t.numpy().tobytes() if t.numel() else b""
    return tensor_pb2.Tensor(dtype=wire, shape=list(t.shape), data=data)


def decode_tensor(msg: tensor_pb2.Tensor, *, name: str = "tensor", limits: TensorLimits = DEFAULT_LIMITS,
                  writable: bool = True, allow_nonfinite: bool = False) -> torch.Tensor:
    dtype = msg.dtype
    if dtype not in WIRE_TO_TORCH:
        raise _invalid(f"tensor '{name}': unknown or unspecified dtype {dtype}")
    if limits.allowed is not None and dtype not in limits.allowed:
        raise _invalid(f"tensor '{name}': dtype {tensor_pb2.DType.Name(dtype)} is not allowed here")
    shape = list(msg.shape)
    if len(shape) > limits.max_dims:
        raise _invalid(f"tensor '{name}': {len(shape)} dimensions, at most {limits.max_dims} allowed")
    count = 1
    for d in shape:
        if d < 0:
            raise _invalid(f"tensor '{name}': negative dimension in shape {shape}")
        count *= d  # Python ints cannot overflow; compared with the limit below
        if count > limits.max_elements:
            raise WireError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"tensor '{name}': shape {shape} has more than the {limits.max_elements} elements allowed")
    np_dtype = WIRE_TO_NUMPY[dtype]
    need = count * np_dtype.itemsize
    if len(msg.data) != need:
        raise _invalid(f"tensor '{name}': data has {len(msg.data)} bytes, shape {shape} with "
                       f"{tensor_pb2.DType.Name(dtype)[6:].lower()} needs {need}")
    array = np.frombuffer(msg.data, dtype=np_dtype, count=count).reshape(shape)
    if writable:
        array = array.copy()
    elif count == 0:
        array = np.empty(shape, dtype=np_dtype)
    tensor = torch.from_numpy(array) if writable else _readonly_tensor(array)
    if dtype == tensor_pb2.DTYPE_BFLOAT16:
        tensor = tensor.view(torch.bfloat16)
    if not allow_nonfinite and dtype in _FLOATS and count and not bool(torch.isfinite(tensor).all()):
        raise _invalid(f"tensor '{name}': contains NaN or Inf")
    return tensor


def _readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor view over read-only bytes (validation only; never written to)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def encode_state(state: Mapping[str, torch.Tensor]) -> list[tensor_pb2.NamedTensor]:
    return [tensor_pb2.NamedTensor(name=k, tensor=encode_tensor(v)) for k, v in state.items()]


def decode_state(named: Iterable[tensor_pb2.NamedTensor], *, limits: TensorLimits = DEFAULT_LIMITS,
                 expected: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for item in named:
        if item.name in out:
            raise _invalid(f"model state names tensor '{item.name}' twice")
        out[item.name] = decode_tensor(item.tensor, name=item.name, limits=limits, writable=True)
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        extra = sorted(set(out) - set(expected))
        if missing or extra:
            raise _invalid(f"model state does not match the segment: missing {missing}, unexpected {extra}")
        for key, ref in expected.items():
            got = out[key]
            if got.dtype != ref.dtype or tuple(got.shape) != tuple(ref.shape):
                raise _invalid(f"tensor '{key}': {got.dtype} {list(got.shape)} where {ref.dtype} "
                               f"{list(ref.shape)} is expected")
    return out
