"""Tensor wire codec: exact round trips for every dtype and shape, and precise refusals of malformed messages."""

from __future__ import annotations

import math
import pickle
import random
import tracemalloc
import warnings
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from slperf.common.protocol.errors import WireError
from slperf.common.wire.codec import (
    DEFAULT_LIMITS,
    TORCH_TO_WIRE,
    WIRE_TO_TORCH,
    TensorLimits,
    decode_state,
    decode_tensor,
    encode_state,
    encode_tensor,
)
from slperf.v1 import tensor_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


def _bits(t: torch.Tensor) -> bytes:
    """The tensor's raw C-order bytes, computed independently of the codec (torch only)."""
    flat = t.detach().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).tolist()) if flat.numel() else b""


def _tensor_from_bits(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _raises(msg, code, *fragments, **kwargs) -> WireError:
    with pytest.raises(WireError) as info:
        decode_tensor(msg, **kwargs)
    err = info.value
    assert err.code == code, err
    assert str(err) == err.message
    for fragment in fragments:
        assert fragment in err.message, (fragment, err.message)
    return err


# ---------------------------------------------------------------- round trips


def test_dtype_table_covers_the_enum_both_ways():
    names = [n for n in tensor_pb2.DType.keys() if n != "DTYPE_UNSPECIFIED"]
    assert sorted(WIRE_TO_TORCH) == sorted(tensor_pb2.DType.Value(n) for n in names)
    assert set(TORCH_TO_WIRE) == set(DTYPES)
    for dtype, code in TORCH_TO_WIRE.items():
        assert WIRE_TO_TORCH[code] is dtype
        assert tensor_pb2.DType.Name(code) == "DTYPE_" + str(dtype).removeprefix("torch.").upper()


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), shape=shapes, seed=st.integers(0, 2**32 - 1), writable=st.booleans())
def test_any_bit_pattern_round_trips_exactly(dtype, shape, seed, writable):
    numel = math.prod(shape)
    rng = random.Random(seed)
    if dtype is torch.bool:
        raw = bytes(rng.getrandbits(1) for _ in range(numel))
    else:
        raw = rng.randbytes(numel * _itemsize(dtype))  # every bit pattern, NaNs and Infs included
    original = _tensor_from_bits(raw, dtype, shape)
    msg = encode_tensor(original)
    assert msg.dtype == TORCH_TO_WIRE[dtype] and list(msg.shape) == list(shape) and msg.data == raw
    decoded = decode_tensor(
        tensor_pb2.Tensor.FromString(msg.SerializeToString()), writable=writable, allow_nonfinite=True
    )
    assert decoded.dtype == dtype and tuple(decoded.shape) == shape and decoded.is_contiguous()
    assert _bits(decoded) == raw


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_values_round_trip_and_the_result_is_writable_and_independent(dtype, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        original = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1e3).to(dtype)
    elif dtype is torch.bool:
        original = torch.randint(0, 2, shape, generator=gen).bool()
    else:
        info = torch.iinfo(dtype)
        original = torch.randint(max(info.min, -(2**62)), min(info.max, 2**62), shape, generator=gen, dtype=dtype)
    msg = encode_tensor(original)
    wire = msg.data
    decoded = decode_tensor(msg)
    assert decoded.dtype == dtype and decoded.shape == original.shape
    assert torch.equal(decoded, original)
    if dtype is torch.bool:
        decoded.logical_not_()
    else:
        decoded.add_(1)
    assert msg.data == wire  # the message is untouched
    assert torch.equal(decode_tensor(msg), original)


def _address(buffer: bytes) -> int:
    return np.frombuffer(buffer, dtype=np.uint8).__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_readonly_decode_is_zero_copy_and_writable_decode_is_one_copy(dtype):
    raw = encode_tensor(torch.ones(256, 64, dtype=dtype)).data
    # A stand-in message whose `data` is always the same bytes object, so addresses can be compared.
    msg = SimpleNamespace(
        dtype=TORCH_TO_WIRE[dtype],
        shape=[256, 64],
        data=raw,
        attachment=0,
        encoding=0,
        scales=[],
        zero_points=[],
        indices=b"",
    )
    view = decode_tensor(msg, writable=False)
    assert view.data_ptr() == _address(raw)

    tracemalloc.start()
    try:
        owned = decode_tensor(msg, writable=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not _address(raw) <= owned.data_ptr() < _address(raw) + len(raw)
    assert len(raw) <= peak < len(raw) * 1.25  # exactly one copy of the data, nothing else of that size
    owned.logical_not_() if dtype is torch.bool else owned.mul_(3)
    assert raw == encode_tensor(torch.ones(256, 64, dtype=dtype)).data


def test_writable_result_owns_its_memory_and_supports_autograd():
    msg = encode_tensor(torch.arange(12, dtype=torch.float32).reshape(3, 4))
    a = decode_tensor(msg)
    b = decode_tensor(msg)
    assert a.data_ptr() != b.data_ptr()
    a.mul_(0)
    assert torch.equal(b, torch.arange(12, dtype=torch.float32).reshape(3, 4))
    a.requires_grad_()
    (a * 2).sum().backward()
    assert torch.equal(a.grad, torch.full((3, 4), 2.0))


def test_readonly_decode_is_silent_and_equal():
    msg = encode_tensor(torch.randn(5, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            t = decode_tensor(msg, writable=False)
    assert torch.equal(t, decode_tensor(msg))


@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_takes_views_grads_and_scalars(dtype):
    base = (torch.arange(24, dtype=torch.float64) - 5).to(dtype).reshape(4, 6)
    for t in (base.t(), base[:, ::2], base[1], base[2, 3], base.expand(2, 4, 6)):
        assert torch.equal(decode_tensor(encode_tensor(t)), t)
    if dtype.is_floating_point:
        leaf = base.clone().requires_grad_()
        out = decode_tensor(encode_tensor(leaf * 1))
        assert not out.requires_grad and torch.equal(out, base)


def test_encode_refuses_what_the_wire_cannot_carry():
    with pytest.raises(WireError) as info:
        encode_tensor(torch.zeros(2, dtype=torch.complex64))
    assert info.value.code == INVALID and "complex64" in info.value.message
    with pytest.raises(WireError) as info:
        encode_tensor(torch.zeros(3, 3).to_sparse())
    assert info.value.code == INVALID and "dense" in info.value.message


# ---------------------------------------------------------------- refusals


def test_wire_error_carries_code_and_message():
    err = WireError(EXHAUSTED, "too big")
    assert (err.code, err.message, str(err)) == (EXHAUSTED, "too big", "too big")
    assert "RESOURCE_EXHAUSTED" in repr(err)
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.code, again.message) == (WireError, EXHAUSTED, "too big")
    assert WireError.invalid("x").code == INVALID and WireError.data_loss("x").code == grpc.StatusCode.DATA_LOSS


def _msg(dtype=tensor_pb2.DTYPE_FLOAT32, shape=(3, 4), data=None, itemsize=4):
    if data is None:
        data = bytes(math.prod(shape) * itemsize) if all(d >= 0 for d in shape) else b""
    return tensor_pb2.Tensor(dtype=dtype, shape=list(shape), data=data)


def test_unknown_and_unspecified_dtypes_are_refused():
    _raises(_msg(dtype=0), INVALID, "tensor 'x'", "DTYPE_UNSPECIFIED", name="x")
    _raises(_msg(dtype=11), INVALID, "tensor 'x'", "unknown dtype number 11", name="x")
    _raises(_msg(dtype=-7), INVALID, "unknown dtype number -7", name="x")


def test_dtypes_outside_the_allowed_set_are_refused():
    limits = TensorLimits(allowed=frozenset({tensor_pb2.DTYPE_FLOAT32, tensor_pb2.DTYPE_BFLOAT16}))
    _raises(
        _msg(dtype=tensor_pb2.DTYPE_FLOAT64, itemsize=8),
        INVALID,
        "tensor 'acts'",
        "float64 is not allowed",
        "bfloat16, float32",
        name="acts",
        limits=limits,
    )
    assert decode_tensor(_msg(), limits=limits).shape == (3, 4)
    with pytest.raises(ValueError):
        TensorLimits(allowed=frozenset({0}))


def test_negative_dimension_is_refused():
    _raises(_msg(shape=(3, -1, 4)), INVALID, "tensor 'w'", "dimension 1", "[3, -1, 4]", "negative (-1)", name="w")


def test_too_many_dimensions_are_refused():
    _raises(_msg(shape=(1,) * 9), INVALID, "9 dimensions", "at most 8")
    _raises(_msg(shape=(1,) * 3), INVALID, "3 dimensions", "at most 2", limits=TensorLimits(max_dims=2))
    assert decode_tensor(_msg(shape=(1,) * 8)).shape == (1,) * 8


@pytest.mark.parametrize("shape", [(2**32, 2**32), (2**62, 2**62, 2**62), (2**63 - 1, 2), (2**40, 2**40, 0)])
def test_huge_dimensions_are_refused_without_overflow(shape):
    _raises(_msg(shape=shape, data=b""), EXHAUSTED, str(list(shape)), "more than the 268435456 allowed")


def test_element_limit_is_resource_exhausted():
    limits = TensorLimits(max_elements=11)
    _raises(
        _msg(shape=(3, 4)),
        EXHAUSTED,
        "tensor 'x'",
        "[3, 4] has 12 elements",
        "more than the 11 allowed",
        name="x",
        limits=limits,
    )
    assert decode_tensor(_msg(shape=(11,)), limits=limits).numel() == 11


@pytest.mark.parametrize("delta", [-1, 1, -48, 1000])
def test_byte_length_must_match_exactly(delta):
    _raises(
        _msg(shape=(3, 4), data=bytes(48 + delta)),
        INVALID,
        f"tensor 'x': data has {48 + delta} bytes, shape [3, 4] with float32 needs 48",
        name="x",
    )


def test_bfloat16_and_empty_lengths_are_checked():
    _raises(
        _msg(dtype=tensor_pb2.DTYPE_BFLOAT16, shape=(5,), data=bytes(9)),
        INVALID,
        "data has 9 bytes, shape [5] with bfloat16 needs 10",
    )
    _raises(_msg(shape=(0, 4), data=b"\0"), INVALID, "data has 1 bytes, shape [0, 4] with float32 needs 0")
    _raises(_msg(shape=(), data=b""), INVALID, "data has 0 bytes, shape [] with float32 needs 4")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_floats_are_refused_unless_allowed(dtype, bad):
    t = torch.zeros(2, 5, dtype=dtype)
    t[1, 3] = bad
    msg = encode_tensor(t)
    kind = "1 NaN and 0 Inf" if math.isnan(bad) else "0 NaN and 1 Inf"
    for writable in (True, False):
        _raises(msg, INVALID, "tensor 'g'", dtype_str(dtype), kind, "flat index 8", name="g", writable=writable)
    out = decode_tensor(msg, allow_nonfinite=True)
    assert _bits(out) == _bits(t)


@pytest.mark.parametrize(
    "dtype, value", [(torch.float16, 60000.0), (torch.bfloat16, 3e38), (torch.float32, 3e38), (torch.float64, 1.7e308)]
)
def test_finite_values_whose_sum_overflows_are_accepted(dtype, value):
    t = torch.full((4, 1000), value, dtype=dtype)
    t[2, 7] = -value
    assert not math.isfinite(t.sum().item())  # the fast check alone would refuse it
    assert torch.equal(decode_tensor(encode_tensor(t)), t)
    t[3, 999] = float("nan")
    _raises(encode_tensor(t), INVALID, "1 NaN and 0 Inf", "flat index 3999")


def dtype_str(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def test_bool_bytes_must_be_zero_or_one():
    _raises(
        _msg(dtype=tensor_pb2.DTYPE_BOOL, shape=(4,), data=b"\x00\x01\x02\x01"),
        INVALID,
        "bool data must be bytes 0 or 1",
        "byte 2 is 2",
    )


# ---------------------------------------------------------------- arbitrary messages

_DTYPE_NUMBERS = st.one_of(
    st.sampled_from(sorted(WIRE_TO_TORCH)),
    st.sampled_from(sorted(WIRE_TO_TORCH) + [0]),
    st.integers(-(2**31), 2**31 - 1),
)
_DIMS = st.one_of(st.integers(0, 6), st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**31, 2**32, 2**62, -1]))
_LIMITS = st.sampled_from(
    [
        DEFAULT_LIMITS,
        TensorLimits(max_elements=64, max_dims=3),
        TensorLimits(max_elements=0, max_dims=0),
        TensorLimits(allowed=frozenset({tensor_pb2.DTYPE_FLOAT32, tensor_pb2.DTYPE_BOOL})),
    ]
)


@st.composite
def tensor_messages(draw):
    dtype = draw(_DTYPE_NUMBERS)
    shape = draw(st.one_of(st.lists(st.integers(0, 4), max_size=4), st.lists(_DIMS, max_size=10)))
    itemsize = _itemsize(WIRE_TO_TORCH[dtype]) if dtype in WIRE_TO_TORCH else 4
    size = math.prod(shape) * itemsize if all(0 <= d <= 6 for d in shape) else None
    if size is not None and size > 4096:
        size = None
    lengths = st.integers(0, 64) if size is None else st.sampled_from([size, size, size, size - 1, size + 1, 0])
    n = max(0, draw(lengths))
    data = draw(st.one_of(st.binary(min_size=n, max_size=n), st.sampled_from([bytes(n), b"\x01" * n])))
    msg = tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)
    return tensor_pb2.Tensor.FromString(msg.SerializeToString())  # as a receiver would see it


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=tensor_messages(), limits=_LIMITS, writable=st.booleans(), allow_nonfinite=st.booleans())
def test_arbitrary_messages_decode_consistently_or_raise_wire_error(msg, limits, writable, allow_nonfinite):
    try:
        t = decode_tensor(msg, name="fuzz", limits=limits, writable=writable, allow_nonfinite=allow_nonfinite)
    except WireError as err:
        assert err.code in (INVALID, EXHAUSTED)
        assert err.message.startswith("tensor 'fuzz': ")
        event(f"refused: {err.code.name}")
        return
    event("decoded")
    assert t.dtype is WIRE_TO_TORCH[msg.dtype]
    assert list(t.shape) == list(msg.shape)
    assert t.numel() * t.element_size() == len(msg.data)
    assert t.numel() <= limits.max_elements and t.dim() <= limits.max_dims
    assert _bits(t) == msg.data
    if t.dtype.is_floating_point and not allow_nonfinite:
        assert bool(torch.isfinite(t).all())


# ---------------------------------------------------------------- state dicts


def _state():
    return {
        "conv.weight": torch.randn(6, 1, 5, 5),
        "conv.bias": torch.randn(6),
        "bn.num_batches_tracked": torch.tensor(3),
        "emb": torch.randn(4, 2).bfloat16(),
    }


def test_state_round_trip_keeps_order_names_and_values():
    state = _state()
    named = encode_state(state)
    assert [n.name for n in named] == list(state)
    out = decode_state(named, expected=state)
    assert list(out) == list(state)
    for k in state:
        assert out[k].dtype == state[k].dtype and torch.equal(out[k], state[k])
    assert decode_state(named, limits=DEFAULT_LIMITS).keys() == state.keys()


def _state_error(named, expected, *fragments):
    with pytest.raises(WireError) as info:
        decode_state(named, limits=DEFAULT_LIMITS, expected=expected)
    assert info.value.code == INVALID
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)


def test_state_missing_and_extra_names_are_listed():
    state = _state()
    sent = dict(state)
    del sent["conv.bias"], sent["emb"]
    sent["fc.weight"] = torch.zeros(2)
    _state_error(encode_state(sent), state, "missing ['conv.bias', 'emb']", "unexpected ['fc.weight']")
    _state_error(
        encode_state({k: v for k, v in state.items() if k != "emb"}), state, "missing ['emb']", "unexpected []"
    )


def test_state_wrong_shape_or_dtype_is_refused():
    state = _state()
    _state_error(
        encode_state({**state, "conv.bias": torch.randn(7)}),
        state,
        "tensor 'conv.bias'",
        "got float32 [7], expected float32 [6]",
    )
    _state_error(
        encode_state({**state, "emb": torch.randn(4, 2)}),
        state,
        "tensor 'emb'",
        "got float32 [4, 2], expected bfloat16 [4, 2]",
    )
    _state_error(
        encode_state({**state, "bn.num_batches_tracked": torch.tensor([3])}),
        state,
        "tensor 'bn.num_batches_tracked'",
        "got int64 [1], expected int64 []",
    )


def test_state_duplicate_and_empty_names_are_refused():
    named = encode_state(_state())
    named.append(tensor_pb2.NamedTensor(name="conv.bias", tensor=encode_tensor(torch.zeros(6))))
    for expected in (None, _state()):
        _state_error(named, expected, "'conv.bias' more than once")
    _state_error([tensor_pb2.NamedTensor(name="", tensor=encode_tensor(torch.zeros(1)))], None, "empty name")


def test_state_tensors_are_validated_with_their_names():
    named = encode_state({"a": torch.zeros(2), "b": torch.tensor([1.0, float("nan")])})
    _state_error(named, None, "tensor 'b'", "1 NaN")
    named[0].tensor.data = b"\0" * 3
    _state_error(named, None, "tensor 'a': data has 3 bytes, shape [2] with float32 needs 8")
    with pytest.raises(WireError) as info:
        decode_state(encode_state({"a": torch.zeros(10)}), limits=TensorLimits(max_elements=5))
    assert info.value.code == EXHAUSTED and "tensor 'a'" in info.value.message


def test_np_and_torch_agree_on_the_wire_byte_order():
    t = torch.tensor([1.0, -2.5], dtype=torch.float32)
    assert encode_tensor(t).data == np.array([1.0, -2.5], dtype="<f4").tobytes()
    assert encode_tensor(torch.tensor([1.0], dtype=torch.bfloat16)).data == b"\x80\x3f"
