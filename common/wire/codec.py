"""Tensor wire codec: raw little-endian C-order bytes + dtype + shape, validated before any allocation.

Copies (measured with benchmarks/bench_codec.py):

* ``encode_tensor`` makes one copy of the tensor into a ``bytes`` object (``ndarray.tobytes``, which also
  makes non-contiguous input C-ordered); the protobuf runtime then copies that into the message.
* Reading ``msg.data`` from the upb protobuf runtime always materialises a fresh ``bytes`` object; that is the
  only way to reach the field through the public API. ``decode_tensor`` reads it exactly once and then:
  ``writable=False`` wraps it with ``numpy.frombuffer`` without copying (the tensor must then not be written
  to: it aliases an immutable ``bytes``); ``writable=True`` makes exactly one more copy (``ndarray.copy``) so
  that autograd and in-place optimiser updates may touch the result. ``torch.frombuffer(bytearray(...))``,
  ``torch.empty`` + ``np.copyto`` and ``Tensor.copy_`` measured within noise of ``ndarray.copy``: above a few
  hundred KiB the cost is dominated by first-touch page faults of the fresh allocations (the field's bytes and
  the copy), not by the copy itself.

The NaN/Inf check is one ``sum`` (the fastest full reduction measured, no temporary the size of the tensor),
with an exact min/max confirmation only when the sum is not finite.

Nothing here pickles.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import numpy as np
import torch

from slperf.common.protocol.errors import WireError
from slperf.v1 import tensor_pb2

__all__ = [
    "DEFAULT_LIMITS",
    "TORCH_TO_WIRE",
    "WIRE_TO_TORCH",
    "TensorLimits",
    "decode_state",
    "decode_tensor",
    "dtype_name",
    "encode_state",
    "encode_tensor",
]


@dataclass(frozen=True)
class _Spec:
    code: int  # tensor_pb2.DType value
    torch_dtype: torch.dtype
    np_dtype: np.dtype  # how the raw bytes are viewed; bfloat16 has no numpy dtype and travels as its int16 bits
    name: str
    is_float: bool


# The one dtype table: wire enum <-> torch dtype <-> numpy view of the bytes.
_SPECS = (
    _Spec(tensor_pb2.DTYPE_FLOAT32, torch.float32, np.dtype("<f4"), "float32", True),
    _Spec(tensor_pb2.DTYPE_FLOAT16, torch.float16, np.dtype("<f2"), "float16", True),
    _Spec(tensor_pb2.DTYPE_BFLOAT16, torch.bfloat16, np.dtype("<i2"), "bfloat16", True),
    _Spec(tensor_pb2.DTYPE_FLOAT64, torch.float64, np.dtype("<f8"), "float64", True),
    _Spec(tensor_pb2.DTYPE_INT64, torch.int64, np.dtype("<i8"), "int64", False),
    _Spec(tensor_pb2.DTYPE_INT32, torch.int32, np.dtype("<i4"), "int32", False),
    _Spec(tensor_pb2.DTYPE_INT16, torch.int16, np.dtype("<i2"), "int16", False),
    _Spec(tensor_pb2.DTYPE_INT8, torch.int8, np.dtype("i1"), "int8", False),
    _Spec(tensor_pb2.DTYPE_UINT8, torch.uint8, np.dtype("u1"), "uint8", False),
    _Spec(tensor_pb2.DTYPE_BOOL, torch.bool, np.dtype("?"), "bool", False),
)
_BY_CODE: Mapping[int, _Spec] = MappingProxyType({s.code: s for s in _SPECS})
_BY_TORCH: Mapping[torch.dtype, _Spec] = MappingProxyType({s.torch_dtype: s for s in _SPECS})

TORCH_TO_WIRE: Mapping[torch.dtype, int] = MappingProxyType({s.torch_dtype: s.code for s in _SPECS})
WIRE_TO_TORCH: Mapping[int, torch.dtype] = MappingProxyType({s.code: s.torch_dtype for s in _SPECS})

# The wire is little-endian; on a big-endian host the bytes are swapped on the way in and out (one extra copy).
_NATIVE_LE = sys.byteorder == "little"
_UINT8 = np.dtype("u1")


def dtype_name(code: int) -> str:
    """'float32' for DTYPE_FLOAT32 etc.; a readable label for unknown numbers too."""
    spec = _BY_CODE.get(code)
    if spec is not None:
        return spec.name
    return "DTYPE_UNSPECIFIED" if code == tensor_pb2.DTYPE_UNSPECIFIED else f"unknown dtype {code}"


@dataclass(frozen=True)
class TensorLimits:
    """What a receiver accepts.

    ``max_elements`` bounds the product of the dimensions, zero-sized ones counted as 1 (so an empty tensor
    cannot carry absurd dimensions either); ``max_dims`` bounds the rank; ``allowed`` is a set of
    ``tensor_pb2.DType`` values, or None for every dtype the codec knows.
    """

    max_elements: int = 1 << 28
    max_dims: int = 8
    allowed: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if self.max_elements < 0 or self.max_dims < 0:
            raise ValueError(
                f"TensorLimits must not be negative (max_elements={self.max_elements}, max_dims={self.max_dims})"
            )
        if self.allowed is not None:
            unknown = sorted(c for c in self.allowed if c not in _BY_CODE)
            if unknown:
                raise ValueError(f"TensorLimits.allowed holds dtype numbers the codec does not know: {unknown}")


DEFAULT_LIMITS = TensorLimits()


# Tensors of at least this many bytes travel as attachments when the sender collects them (see encode_tensor).
BULK_MIN_BYTES = 1 << 20


def encode_tensor(t: torch.Tensor, bulk: list[memoryview] | None = None) -> tensor_pb2.Tensor:
    """The tensor as raw little-endian C-order bytes (detached, moved to CPU, one copy into ``bytes``).

    ``ndarray.tobytes`` measured fastest among ``tobytes``, ``bytes(memoryview)`` and going through
    ``view(torch.uint8)``, and it C-orders non-contiguous tensors in the same single copy.

    With ``bulk`` (a list the caller hands to ``Framer.frames``), a tensor of ``BULK_MIN_BYTES`` or more is not
    copied at all: a view of its memory is appended to ``bulk`` and the message only names it
    (``attachment``). The tensor must then stay unchanged until the message is sent.
    Raises WireError (INVALID_ARGUMENT) for a dtype or layout the wire cannot carry.
    """
    spec = _BY_TORCH.get(t.dtype)
    if spec is None:
        raise WireError.invalid(
            f"dtype {t.dtype} cannot be sent on the wire (supported: {', '.join(s.name for s in _SPECS)})"
        )
    if t.layout != torch.strided:
        raise WireError.invalid(f"only dense tensors can be sent on the wire, not {t.layout}")
    if spec.code == tensor_pb2.DTYPE_BFLOAT16:
        t = t.detach().view(torch.int16)  # same bits; numpy has no bfloat16
    array = t.numpy(force=True)  # detach, cpu, resolve conj/neg; no copy for a plain CPU tensor
    if not _NATIVE_LE and array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("<"))
    if bulk is not None and array.nbytes >= BULK_MIN_BYTES:
        contiguous: Any = np.ascontiguousarray(array)  # numpy's stubs do not declare the buffer protocol
        bulk.append(memoryview(contiguous).cast("B"))  # no copy for a contiguous tensor
        return tensor_pb2.Tensor(dtype=_wire_dtype(spec.code), shape=t.shape, attachment=len(bulk))
    return tensor_pb2.Tensor(dtype=_wire_dtype(spec.code), shape=t.shape, data=array.tobytes())  # tobytes: C order


def _wire_dtype(code: int) -> tensor_pb2.DType:
    return cast(tensor_pb2.DType, code)


def decode_tensor(
    msg: tensor_pb2.Tensor,
    *,
    name: str = "tensor",
    limits: TensorLimits = DEFAULT_LIMITS,
    writable: bool = True,
    allow_nonfinite: bool = False,
    bulk: Sequence[bytes | memoryview] = (),
) -> torch.Tensor:
    """Validates ``msg`` completely, then decodes it (see the module docstring for the copies made).

    A tensor sent as an attachment is read from ``bulk`` (``Inbound.bulk``). When that buffer is writable (a
    transfer reassembled from several chunks) the result aliases it with no copy at all, writable or not.

    Raises WireError: INVALID_ARGUMENT for an unknown/unspecified/disallowed dtype, a negative dimension, too
    many dimensions, a byte length that does not match the shape, non-0/1 bool bytes, a compressed encoding
    (only cut tensors may be compressed: ``slperf.common.wire.compressed``) or (unless ``allow_nonfinite``) NaN/Inf in a
    float tensor; RESOURCE_EXHAUSTED for more than ``limits.max_elements``.
    With ``writable=False`` the result aliases immutable memory and must not be modified in place.
    """
    if msg.encoding != tensor_pb2.TENSOR_ENCODING_UNSPECIFIED or msg.scales or msg.zero_points or msg.indices:
        raise WireError.invalid(f"tensor '{name}': only cut tensors may be compressed; this one must be plain")
    spec, shape, numel = checked_layout(msg, name, limits)
    need = numel * spec.np_dtype.itemsize

    data = payload(msg, name, bulk)
    if len(data) != need:
        raise WireError.invalid(
            f"tensor '{name}': data has {len(data)} bytes, shape {list(shape)} with {spec.name} needs {need}"
        )

    if spec.code == tensor_pb2.DTYPE_BOOL and numel and np.frombuffer(data, dtype=_UINT8).max() > 1:
        bad = np.frombuffer(data, dtype=_UINT8)
        first = int(np.flatnonzero(bad > 1)[0])
        raise WireError.invalid(f"tensor '{name}': bool data must be bytes 0 or 1; byte {first} is {bad[first]}")

    array = np.frombuffer(data, dtype=spec.np_dtype)  # zero-copy view of `data` (read-only over bytes)
    if not _NATIVE_LE and array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("="))  # the byte swap is then the one copy
    elif writable and not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array) if array.flags.writeable else _from_readonly(array)
    if spec.code == tensor_pb2.DTYPE_BFLOAT16:
        tensor = tensor.view(torch.bfloat16)
    tensor = tensor.view(shape)

    if spec.is_float and numel and not allow_nonfinite and not all_finite(tensor):
        raise WireError.invalid(nonfinite_message(name, spec.name, tensor))
    return tensor


def checked_layout(msg: tensor_pb2.Tensor, name: str, limits: TensorLimits) -> tuple[_Spec, tuple[int, ...], int]:
    """The dtype's spec, the shape and the element count, once dtype, rank and size are within ``limits``."""
    code = msg.dtype
    spec = _BY_CODE.get(code)
    if spec is None:
        if code == tensor_pb2.DTYPE_UNSPECIFIED:
            raise WireError.invalid(f"tensor '{name}': dtype is DTYPE_UNSPECIFIED")
        raise WireError.invalid(f"tensor '{name}': unknown dtype number {code}")
    if limits.allowed is not None and code not in limits.allowed:
        allowed = ", ".join(sorted(dtype_name(c) for c in limits.allowed)) or "none"
        raise WireError.invalid(f"tensor '{name}': dtype {spec.name} is not allowed here (allowed: {allowed})")

    shape = tuple(msg.shape)
    if len(shape) > limits.max_dims:
        raise WireError.invalid(
            f"tensor '{name}': shape has {len(shape)} dimensions, at most {limits.max_dims} are allowed"
        )
    # Python ints cannot overflow, and at most max_dims factors are multiplied. Zero-sized dims are counted
    # as 1 in the bound so that e.g. [2**62, 2**62, 0] is refused too (its strides would overflow int64).
    bound = 1
    for i, d in enumerate(shape):
        if d < 0:
            raise WireError.invalid(f"tensor '{name}': dimension {i} of shape {list(shape)} is negative ({d})")
        if d > 1:
            bound *= d
    numel = 0 if 0 in shape else bound
    if bound > limits.max_elements:
        what = f"has {bound} elements" if numel else f"spans {bound} elements (zero-sized dimensions counted as 1)"
        raise WireError.exhausted(
            f"tensor '{name}': shape {list(shape)} {what}, more than the {limits.max_elements} allowed"
        )
    return spec, shape, numel


def payload(msg: tensor_pb2.Tensor, name: str, bulk: Sequence[bytes | memoryview]) -> bytes | memoryview:
    index = msg.attachment
    if not index:
        return msg.data  # upb copies the field into a new bytes object on every access: read it once
    if msg.data:
        raise WireError.invalid(f"tensor '{name}': carries both inline data and attachment {index}")
    if index > len(bulk):
        raise WireError.invalid(f"tensor '{name}': names attachment {index}, but the message has {len(bulk)}")
    return bulk[index - 1]


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or +-Inf, without a temporary the size of the tensor.

    Any NaN or Inf makes the sum NaN or Inf, so a finite sum (the fastest reduction, measured) proves the tensor
    finite. A non-finite sum may also be an overflow of finite values (float16 overflows past 65504), so it is
    confirmed with min/max, which propagate NaN.
    """
    if math.isfinite(tensor.sum().item()):
        return True
    lo, hi = torch.aminmax(tensor)
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


def nonfinite_message(name: str, dtype: str, tensor: torch.Tensor) -> str:
    flat = tensor.reshape(-1)
    nan = torch.isnan(flat)
    inf = torch.isinf(flat)
    first = int(torch.nonzero(nan | inf)[0, 0])
    return (
        f"tensor '{name}': {dtype} data contains {int(nan.sum())} NaN and {int(inf.sum())} Inf values "
        f"(first at flat index {first}); non-finite values are not accepted"
    )


_readonly_lock = threading.Lock()
_readonly_warned = False


def _from_readonly(array: np.ndarray) -> torch.Tensor:
    """torch.from_numpy over read-only memory. Torch warns about that once per process; the warning is
    expected here (documented contract of writable=False), so the first call swallows it."""
    global _readonly_warned
    if _readonly_warned:
        return torch.from_numpy(array)
    with _readonly_lock:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
        _readonly_warned = True
    return tensor


def encode_state(
    state: Mapping[str, torch.Tensor], bulk: list[memoryview] | None = None
) -> list[tensor_pb2.NamedTensor]:
    """A state dict as NamedTensors, in the mapping's order (``bulk``: see encode_tensor)."""
    return [tensor_pb2.NamedTensor(name=k, tensor=encode_tensor(v, bulk)) for k, v in state.items()]


def decode_state(
    named: Iterable[tensor_pb2.NamedTensor],
    *,
    limits: TensorLimits = DEFAULT_LIMITS,
    expected: Mapping[str, torch.Tensor] | None = None,
    writable: bool = True,
    allow_nonfinite: bool = False,
    bulk: Sequence[bytes | memoryview] = (),
) -> dict[str, torch.Tensor]:
    """Decodes a state dict. Empty and duplicate names are refused. With ``expected``, the names must be exactly
    its keys and every tensor must have the expected tensor's dtype and shape; all of that is checked on the
    messages before any tensor is decoded. Every failure is a WireError with INVALID_ARGUMENT (or the
    RESOURCE_EXHAUSTED of an element limit)."""
    items = list(named)
    seen: set[str] = set()
    for item in items:
        if not item.name:
            raise WireError.invalid("model state holds a tensor with an empty name")
        if item.name in seen:
            raise WireError.invalid(f"model state names tensor '{item.name}' more than once")
        seen.add(item.name)
    if expected is not None:
        check_state_layout({item.name: (item.tensor.dtype, list(item.tensor.shape)) for item in items}, expected)
    return {
        item.name: decode_tensor(
            item.tensor, name=item.name, limits=limits, writable=writable, allow_nonfinite=allow_nonfinite, bulk=bulk
        )
        for item in items
    }


def check_state_layout(layout: Mapping[str, tuple[int, list[int]]], expected: Mapping[str, torch.Tensor]) -> None:
    """Refuses a state whose names are not exactly ``expected``'s keys or whose tensors differ from the expected
    ones in dtype (a wire dtype number) or shape."""
    missing = [k for k in expected if k not in layout]
    extra = [name for name in layout if name not in expected]
    if missing or extra:
        raise WireError.invalid(f"model state does not match: missing {missing}, unexpected {extra}")
    for name, (code, shape) in layout.items():
        ref = expected[name]
        ref_spec = _BY_TORCH.get(ref.dtype)
        if ref_spec is None or code != ref_spec.code or shape != list(ref.shape):
            raise WireError.invalid(
                f"tensor '{name}': got {dtype_name(code)} {shape}, "
                f"expected {str(ref.dtype).removeprefix('torch.')} {list(ref.shape)}"
            )


def check_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """``check_state_layout`` for a state that is already decoded."""
    check_state_layout(
        {name: (_BY_TORCH[t.dtype].code if t.dtype in _BY_TORCH else -1, list(t.shape)) for name, t in state.items()},
        expected,
    )
