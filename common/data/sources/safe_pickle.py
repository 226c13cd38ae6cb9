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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DatasetCorrupt

MAX_PICKLE_BYTES = 512 << 20  # far above a 31 MB CIFAR batch
# Container entries (list items, tuple items, dict keys and values) in one pickle. A CIFAR-10 batch holds 20 004
# (10 000 labels, 10 000 file names, 4 keys), CIFAR-100's training file 150 004; no data set this reader serves
# comes near the bound, and a pickle past it is refused before it costs gigabytes of Python objects.
MAX_VALUES = 2_000_000

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

    value: np.ndarray | None = field(default=None)


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING"}  # Python 2 str: kept as bytes (like encoding='bytes')
_BYTES_OPS = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_TEXT_OPS = {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_FLOAT_OPS = {"FLOAT", "BINFLOAT"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_KEY_TYPES = (str, bytes, int, float, bool, type(None))  # dict keys a data pickle may use


def _refuse(what: str, reason: str) -> UnsafePickle:
    return UnsafePickle(
        f"{what}: refused, {reason}; this reader accepts only plain data and numeric NumPy arrays and executed nothing"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, tuple) and all(_is_int(d) and d >= 0 for d in v):
        return v
    return None


def _make_array(raw: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool, what: str) -> np.ndarray:
    if not isinstance(raw, (bytes, bytearray)):
        raise _refuse(what, "array data that are not raw bytes (an object array?)")
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise DatasetCorrupt(
            f"{what}: array data hold {len(raw)} bytes, shape {shape} of {dtype} needs {count * dtype.itemsize}"
        )
    arr = np.frombuffer(bytes(raw), dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))


def _reduce(func: Any, args: Any, what: str) -> Any:
    if not isinstance(func, _Global):
        raise _refuse(what, f"REDUCE on a {type(func).__name__}, not a known constructor")
    if not isinstance(args, tuple):
        raise _refuse(what, f"REDUCE of {func.name} with non-tuple arguments")
    role = func.role
    if role == "reconstruct":
        if (
            len(args) == 3
            and isinstance(args[0], _Global)
            and args[0].role == "ndarray"
            and _shape(args[1]) is not None
            and isinstance(args[2], (bytes, str))
        ):
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
        if len(args) == 4 and isinstance(args[1], _DType) and _shape(args[2]) is not None and args[3] in ("C", "F"):
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
        if not (
            isinstance(state, tuple)
            and len(state) == 5
            and _is_int(state[0])
            and _shape(state[1]) is not None
            and isinstance(state[2], _DType)
            and isinstance(state[3], int)
        ):
            raise _refuse(what, "an array state of an unexpected shape")
        obj.value = _make_array(state[4], state[2].resolve(), state[1], bool(state[3]), what)
        return
    raise _refuse(what, f"BUILD on a {type(obj).__name__} (only arrays and dtypes are built)")


class _Finisher:
    """Turns the machine's values into plain results, each shared value once.

    A memo entry read N times is N references to one value, so results are memoised by identity: without that,
    a few hundred bytes of nested shared references (each level two references to the one below) expand to 2^depth
    values. A value that contains itself is refused (a data set has no cycles).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.done: dict[int, Any] = {}
        self.open: set[int] = set()

    def __call__(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, _Array):
            if value.value is None:
                raise DatasetCorrupt(f"{self.what}: an array was announced but never filled in")
            return value.value
        if isinstance(value, (_Global, _DType)):
            raise _refuse(self.what, "a bare constructor or dtype in the data")
        if not isinstance(value, (dict, list, tuple)):
            return value
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.open:
            raise DatasetCorrupt(f"{self.what}: a value that contains itself (a data set has no cycles)")
        if depth > 100:
            raise DatasetCorrupt(f"{self.what}: nested too deeply")
        self.open.add(key)
        result: Any
        if isinstance(value, dict):
            result = {self(k, depth + 1): self(v, depth + 1) for k, v in value.items()}
        elif isinstance(value, list):
            result = [self(v, depth + 1) for v in value]
        else:
            result = tuple(self(v, depth + 1) for v in value)
        self.open.discard(key)
        self.done[key] = result
        return result


class _Machine:
    """The reader's state while it walks the opcodes: the stack, the MARK stack, the memo and the result."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.done = False
        self.result: Any = None
        self.values = 0
        self.made_bytes = 0
        self.byte_budget = 0

    def count(self, n: int) -> None:
        """Counts n more container entries against MAX_VALUES."""
        self.values += n
        if self.values > MAX_VALUES:
            raise DatasetCorrupt(
                f"{self.what}: more than {MAX_VALUES} values (a CIFAR batch holds about 20 000): not a data set batch"
            )

    def made(self, value: Any) -> None:
        """Counts the bytes of the arrays and encoded texts the reader built: at most twice the pickle's size.

        A legitimate array's bytes are in the file once (as bytes, or as text that _codecs.encode turns into the
        bytes the array is then built from); a memo entry read many times must not become many copies.
        """
        if isinstance(value, np.ndarray):
            self.made_bytes += value.nbytes
        elif isinstance(value, bytes):
            self.made_bytes += len(value)
        if self.made_bytes > self.byte_budget:
            raise DatasetCorrupt(
                f"{self.what}: its arrays and texts would take more than {self.byte_budget} bytes, twice the "
                "pickle's size (shared data built many times): not a data set batch"
            )

    def pop_mark(self) -> list[Any]:
        """The items pushed since the last MARK; the stack below the mark becomes the stack again."""
        if not self.marks:
            raise DatasetCorrupt(f"{self.what}: a MARK is missing")
        items, self.stack = self.stack, self.marks.pop()
        return items


# One handler per accepted opcode: handler(machine, opcode name, argument, byte position). An opcode without a
# handler is refused.
_Handler = Callable[[_Machine, str, Any, int], None]
_HANDLERS: dict[str, _Handler] = {}


def _handles(*names: str) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        for name in names:
            _HANDLERS[name] = handler
        return handler

    return register


def _push(convert: Callable[[Any], Any]) -> _Handler:
    def handler(m: _Machine, name: str, arg: Any, pos: int) -> None:
        m.stack.append(convert(arg))

    return handler


def _push_constant(make: Callable[[], Any]) -> _Handler:
    def handler(m: _Machine, name: str, arg: Any, pos: int) -> None:
        m.stack.append(make())

    return handler


for _names, _handler in (
    (_STRING_OPS, _push(lambda arg: arg.encode("latin-1"))),
    (_BYTES_OPS, _push(bytes)),
    (_TEXT_OPS, _push(lambda arg: arg)),
    (_INT_OPS, _push(lambda arg: int(arg) if not isinstance(arg, bool) else arg)),
    (_FLOAT_OPS, _push(float)),
    (("NONE",), _push_constant(lambda: None)),
    (("NEWTRUE",), _push_constant(lambda: True)),
    (("NEWFALSE",), _push_constant(lambda: False)),
    (("EMPTY_DICT",), _push_constant(dict)),
    (("EMPTY_LIST",), _push_constant(list)),
    (("EMPTY_TUPLE",), _push_constant(tuple)),
):
    _handles(*_names)(_handler)


@_handles("PROTO")
def _proto(m: _Machine, name: str, arg: Any, pos: int) -> None:
    if not 0 <= arg <= 5:
        raise DatasetCorrupt(f"{m.what}: unknown pickle protocol {arg}")


@_handles("FRAME")
def _frame(m: _Machine, name: str, arg: Any, pos: int) -> None:
    pass


@_handles("STOP")
def _stop(m: _Machine, name: str, arg: Any, pos: int) -> None:
    if len(m.stack) != 1 or m.marks:
        raise DatasetCorrupt(f"{m.what}: STOP with {len(m.stack)} values on the stack")
    m.result, m.done = m.stack.pop(), True


@_handles("MARK")
def _mark(m: _Machine, name: str, arg: Any, pos: int) -> None:
    m.marks.append(m.stack)
    m.stack = []


@_handles("TUPLE1", "TUPLE2", "TUPLE3")
def _small_tuple(m: _Machine, name: str, arg: Any, pos: int) -> None:
    n = int(name[-1])
    if len(m.stack) < n:
        raise DatasetCorrupt(f"{m.what}: {name} at byte {pos} on a short stack")
    items = m.stack[-n:]
    del m.stack[-n:]
    m.count(len(items))
    m.stack.append(tuple(items))


@_handles("TUPLE")
def _tuple(m: _Machine, name: str, arg: Any, pos: int) -> None:
    items = m.pop_mark()  # first: it rebinds the stack
    m.count(len(items))
    m.stack.append(tuple(items))


@_handles("LIST")
def _list(m: _Machine, name: str, arg: Any, pos: int) -> None:
    items = m.pop_mark()
    m.count(len(items))
    m.stack.append(items)


@_handles("DICT")
def _dict(m: _Machine, name: str, arg: Any, pos: int) -> None:
    items = m.pop_mark()
    if len(items) % 2 or not all(isinstance(k, _KEY_TYPES) for k in items[0::2]):
        raise _refuse(m.what, "a DICT with odd items or unhashable keys")
    m.count(len(items))
    m.stack.append(dict(zip(items[0::2], items[1::2])))


@_handles("APPEND")
def _append(m: _Machine, name: str, arg: Any, pos: int) -> None:
    value = m.stack.pop()
    if not isinstance(m.stack[-1], list):
        raise _refuse(m.what, f"APPEND to a {type(m.stack[-1]).__name__}")
    m.count(1)
    m.stack[-1].append(value)


@_handles("APPENDS")
def _appends(m: _Machine, name: str, arg: Any, pos: int) -> None:
    items = m.pop_mark()
    if not isinstance(m.stack[-1], list):
        raise _refuse(m.what, f"APPENDS to a {type(m.stack[-1]).__name__}")
    m.count(len(items))
    m.stack[-1].extend(items)


@_handles("SETITEM", "SETITEMS")
def _setitems(m: _Machine, name: str, arg: Any, pos: int) -> None:
    if name == "SETITEM":
        value, key = m.stack.pop(), m.stack.pop()
        pairs = [(key, value)]
    else:
        items = m.pop_mark()
        if len(items) % 2:
            raise DatasetCorrupt(f"{m.what}: SETITEMS at byte {pos} with an odd number of items")
        pairs = list(zip(items[0::2], items[1::2]))
    target = m.stack[-1]
    if not isinstance(target, dict):
        raise _refuse(m.what, f"{name} on a {type(target).__name__}")
    m.count(2 * len(pairs))
    for key, value in pairs:
        if not isinstance(key, _KEY_TYPES):
            raise _refuse(m.what, f"a dict key of type {type(key).__name__}")
        target[key] = value


@_handles(*_PUT_OPS)
def _put(m: _Machine, name: str, arg: Any, pos: int) -> None:
    m.memo[int(arg)] = m.stack[-1]


@_handles("MEMOIZE")
def _memoize(m: _Machine, name: str, arg: Any, pos: int) -> None:
    m.memo[len(m.memo)] = m.stack[-1]


@_handles(*_GET_OPS)
def _get(m: _Machine, name: str, arg: Any, pos: int) -> None:
    try:
        m.stack.append(m.memo[int(arg)])
    except KeyError:
        raise DatasetCorrupt(f"{m.what}: memo entry {arg} read before it was written") from None


@_handles("GLOBAL", "STACK_GLOBAL")
def _global(m: _Machine, name: str, arg: Any, pos: int) -> None:
    if name == "GLOBAL":
        module, _, attr = str(arg).partition(" ")
    else:
        attr, module = m.stack.pop(), m.stack.pop()
        if not (isinstance(module, str) and isinstance(attr, str)):
            raise _refuse(m.what, "STACK_GLOBAL with non-text names")
    role = _GLOBALS.get((module, attr))
    if role is None:
        raise _refuse(m.what, f"the global {module}.{attr} at byte {pos}")
    m.stack.append(_Global(role, f"{module}.{attr}"))


@_handles("REDUCE")
def _reduce_op(m: _Machine, name: str, arg: Any, pos: int) -> None:
    args, func = m.stack.pop(), m.stack.pop()
    value = _reduce(func, args, m.what)
    m.made(value)
    m.stack.append(value)


@_handles("BUILD")
def _build_op(m: _Machine, name: str, arg: Any, pos: int) -> None:
    state = m.stack.pop()
    target = m.stack[-1]
    _build(target, state, m.what)
    if isinstance(target, _Array):
        m.made(target.value)


def safe_load(data: bytes, *, what: str = "pickle") -> Any:
    """Decodes a data-only pickle (see the module docstring) without executing anything.

    Raises UnsafePickle for anything outside the accepted set, DatasetCorrupt for a damaged file.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise DatasetCorrupt(f"{what}: {len(data)} bytes is more than this reader accepts ({MAX_PICKLE_BYTES})")
    machine = _Machine(what)
    machine.byte_budget = 2 * len(data)  # arrays, and the texts _codecs.encode makes bytes of: each in the file once
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            handler = _HANDLERS.get(op.name)
            if handler is None:
                raise _refuse(what, f"the opcode {op.name} at byte {pos}")
            handler(machine, op.name, arg, pos)
            if machine.done:
                return _Finisher(what)(machine.result)
    except DatasetCorrupt:
        raise
    except (ValueError, IndexError, TypeError, AssertionError, UnicodeError, OverflowError, MemoryError) as exc:
        raise DatasetCorrupt(f"{what}: not a valid pickle ({type(exc).__name__}: {exc})") from None
    raise DatasetCorrupt(f"{what}: the pickle ends without STOP")
