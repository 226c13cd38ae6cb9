"""A restricted reader for data-only pickles (the CIFAR-10 python batches), that never runs pickle.

`pickle.load` executes whatever a file tells it to: a GLOBAL naming `os.system` followed by REDUCE calls it. So
the CIFAR files are never handed to pickle. `safe_load` walks the opcodes with `pickletools.genops` (which
only decodes opcodes and their arguments) and interprets a small, closed set of them with its own stack
machine:

* plain data: dicts, lists, tuples, str, bytes, int, float, bool, None (protocols 0-5 spellings, memo, frames);
* NumPy arrays of plain numeric dtypes, in the three shapes NumPy writes them: ``_reconstruct`` + ``BUILD``
  state (protocols 0-4), ``_frombuffer`` (protocol 5 in-band), and ``dtype`` objects;
* ``_codecs.encode(text, 'latin1')``, which Python 3 writes for bytes at protocols 0-2.

A global is only ever a *name* matched against that list; it is never imported, looked up or called. The
reader builds the result itself (``np.frombuffer`` on the validated raw bytes). Every other global, every
REDUCE/BUILD with arguments of an unexpected shape, and every opcode outside the set (INST, OBJ, NEWOBJ,
EXT*, PERSID, ...) is refused with `UnsafePickle` before anything else happens.
"""
from __future__ import annotations

import io
import math
import pickletools
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import DatasetCorrupt

MAX_PICKLE_BYTES = 512 << 20  # far above a 31 MB CIFAR batch

_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("_codecs", "encode"): "encode",
}
# Plain numeric dtypes only: never object, structured or string dtypes.
_DTYPES = frozenset(
    f"{kind}{size}" for kind, sizes in (("u", (1, 2, 4, 8)), ("i", (1, 2, 4, 8)), ("f", (2, 4, 8))) for size in sizes
) | {"b1"}


class UnsafePickle(DatasetCorrupt):
    """The pickle holds something other than plain data and numeric arrays; nothing in it was executed."""


@dataclass(eq=False)
class _Global:
    role: str
    name: str


@dataclass(eq=False)
class _DType:
    name: str
    byteorder: str = "="

    def resolve(self) -> np.dtype:
        dt = np.dtype(self.name)  # name is one of _DTYPES: a plain numeric dtype
        if dt.itemsize > 1 and self.byteorder in "<>":
            dt = dt.newbyteorder(self.byteorder)
        return dt


@dataclass(eq=False)
class _Array:
    """An ndarray announced by _reconstruct and filled in by BUILD (mutated in place: the memo may hold it)."""

    value: Optional[np.ndarray] = field(default=None)


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING"}  # Python 2 str: kept as bytes (like encoding='bytes')
_BYTES_OPS = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_TEXT_OPS = {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_FLOAT_OPS = {"FLOAT", "BINFLOAT"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def _refuse(what: str, reason: str) -> UnsafePickle:
    return UnsafePickle(f"{what}: refused, {reason}; this reader accepts only plain data and numeric NumPy arrays "
                        "and executed nothing")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(v: Any) -> Optional[tuple[int, ...]]:
    if isinstance(v, tuple) and all(_is_int(d) and d >= 0 for d in v):
        return v
    return None


def _make_array(raw: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool, what: str) -> np.ndarray:
    if not isinstance(raw, (bytes, bytearray)):
        raise _refuse(what, "array data that are not raw bytes (an object array?)")
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise DatasetCorrupt(f"{what}: array data hold {len(raw)} bytes, shape {shape} of {dtype} needs "
                             f"{count * dtype.itemsize}")
    arr = np.frombuffer(bytes(raw), dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))


def _reduce(func: Any, args: Any, what: str) -> Any:
    if not isinstance(func, _Global):
        raise _refuse(what, f"REDUCE on a {type(func).__name__}, not a known constructor")
    if not isinstance(args, tuple):
        raise _refuse(what, f"REDUCE of {func.name} with non-tuple arguments")
    role = func.role
    if role == "reconstruct":
        if (len(args) == 3 and isinstance(args[0], _Global) and args[0].role == "ndarray"
                and _shape(args[1]) is not None and isinstance(args[2], (bytes, str))):
            return _Array()
    elif role == "dtype":
        if len(args) == 3 and isinstance(args[0], (bytes, str)) and all(isinstance(a, int) for a in args[1:]):
            name = args[0].decode("latin-1") if isinstance(args[0], bytes) else args[0]
            if name in _DTYPES:
                return _DType(name)
            raise _refuse(what, f"dtype {name!r} (only plain numeric dtypes are accepted)")
    elif role == "encode":
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            return args[0].encode("latin-1")
    elif role == "frombuffer":
        if (len(args) == 4 and isinstance(args[1], _DType) and _shape(args[2]) is not None
                and args[3] in ("C", "F")):
            return _make_array(args[0], args[1].resolve(), args[2], args[3] == "F", what)
    raise _refuse(what, f"a call of {func.name} with unexpected arguments")


def _build(obj: Any, state: Any, what: str) -> None:
    if isinstance(obj, _DType):
        if not (isinstance(state, tuple) and len(state) >= 2 and isinstance(state[1], (str, bytes))):
            raise _refuse(what, "a dtype state of an unexpected shape")
        order = state[1].decode("latin-1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise _refuse(what, f"dtype byte order {order!r}")
        obj.byteorder = order
        return
    if isinstance(obj, _Array):
        if obj.value is not None:
            raise _refuse(what, "a second BUILD of the same array")
        if not (isinstance(state, tuple) and len(state) == 5 and _is_int(state[0])
                and _shape(state[1]) is not None and isinstance(state[2], _DType) and isinstance(state[3], int)):
            raise _refuse(what, "an array state of an unexpected shape")
        obj.value = _make_array(state[4], state[2].resolve(), state[1], bool(state[3]), what)
        return
    raise _refuse(what, f"BUILD on a {type(obj).__name__} (only arrays and dtypes are built)")


def _finish(value: Any, what: str, depth: int = 0) -> Any:
    if depth > 100:
        raise DatasetCorrupt(f"{what}: nested too deeply")
    if isinstance(value, _Array):
        if value.value is None:
            raise DatasetCorrupt(f"{what}: an array was announced but never filled in")
        return value.value
    if isinstance(value, (_Global, _DType)):
        raise _refuse(what, "a bare constructor or dtype in the data")
    if isinstance(value, dict):
        return {_finish(k, what, depth + 1): _finish(v, what, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_finish(v, what, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_finish(v, what, depth + 1) for v in value)
    return value


def safe_load(data: bytes, *, what: str = "pickle") -> Any:
    """Decodes a data-only pickle (see the module docstring) without executing anything.

    Raises UnsafePickle for anything outside the accepted set, DatasetCorrupt for a damaged file.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise DatasetCorrupt(f"{what}: {len(data)} bytes is more than this reader accepts ({MAX_PICKLE_BYTES})")
    stack: list[Any] = []
    marks: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        nonlocal stack
        if not marks:
            raise DatasetCorrupt(f"{what}: a MARK is missing")
        items, stack = stack, marks.pop()
        return items

    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name == "PROTO":
                if not 0 <= arg <= 5:
                    raise DatasetCorrupt(f"{what}: unknown pickle protocol {arg}")
            elif name == "FRAME":
                pass
            elif name == "STOP":
                if len(stack) != 1 or marks:
                    raise DatasetCorrupt(f"{what}: STOP with {len(stack)} values on the stack")
                return _finish(stack.pop(), what)
            elif name == "MARK":
                marks.append(stack)
                stack = []
            elif name in _STRING_OPS:
                stack.append(arg.encode("latin-1"))
            elif name in _BYTES_OPS:
                stack.append(bytes(arg))
            elif name in _TEXT_OPS:
                stack.append(arg)
            elif name in _INT_OPS:
                stack.append(int(arg) if not isinstance(arg, bool) else arg)
            elif name in _FLOAT_OPS:
                stack.append(float(arg))
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                if len(stack) < n:
                    raise DatasetCorrupt(f"{what}: {name} at byte {pos} on a short stack")
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif name in ("TUPLE", "LIST", "DICT"):
                items = pop_mark()  # first: it rebinds `stack`
                if name == "TUPLE":
                    stack.append(tuple(items))
                elif name == "LIST":
                    stack.append(items)
                else:
                    if len(items) % 2 or not all(isinstance(k, (str, bytes, int, float, bool, type(None)))
                                                 for k in items[0::2]):
                        raise _refuse(what, "a DICT with odd items or unhashable keys")
                    stack.append(dict(zip(items[0::2], items[1::2])))
            elif name == "APPEND":
                value = stack.pop()
                if not isinstance(stack[-1], list):
                    raise _refuse(what, f"APPEND to a {type(stack[-1]).__name__}")
                stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_mark()
                if not isinstance(stack[-1], list):
                    raise _refuse(what, f"APPENDS to a {type(stack[-1]).__name__}")
                stack[-1].extend(items)
            elif name in ("SETITEM", "SETITEMS"):
                if name == "SETITEM":
                    value, key = stack.pop(), stack.pop()
                    pairs = [(key, value)]
                else:
                    items = pop_mark()
                    if len(items) % 2:
                        raise DatasetCorrupt(f"{what}: SETITEMS at byte {pos} with an odd number of items")
                    pairs = list(zip(items[0::2], items[1::2]))
                target = stack[-1]
                if not isinstance(target, dict):
                    raise _refuse(what, f"{name} on a {type(target).__name__}")
                for key, value in pairs:
                    if not isinstance(key, (str, bytes, int, float, bool, type(None))):
                        raise _refuse(what, f"a dict key of type {type(key).__name__}")
                    target[key] = value
            elif name in _PUT_OPS:
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _GET_OPS:
                try:
                    stack.append(memo[int(arg)])
                except KeyError:
                    raise DatasetCorrupt(f"{what}: memo entry {arg} read before it was written") from None
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                else:
                    attr, module = stack.pop(), stack.pop()
                    if not (isinstance(module, str) and isinstance(attr, str)):
                        raise _refuse(what, "STACK_GLOBAL with non-text names")
                role = _GLOBALS.get((module, attr))
                if role is None:
                    raise _refuse(what, f"the global {module}.{attr} at byte {pos}")
                stack.append(_Global(role, f"{module}.{attr}"))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(_reduce(func, args, what))
            elif name == "BUILD":
                state = stack.pop()
                _build(stack[-1], state, what)
            else:
                raise _refuse(what, f"the opcode {name} at byte {pos}")
    except DatasetCorrupt:
        raise
    except (ValueError, IndexError, TypeError, AssertionError, UnicodeError, OverflowError, MemoryError) as exc:
        raise DatasetCorrupt(f"{what}: not a valid pickle ({type(exc).__name__}: {exc})") from None
    raise DatasetCorrupt(f"{what}: the pickle ends without STOP")
