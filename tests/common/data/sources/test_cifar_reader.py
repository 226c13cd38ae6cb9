"""The restricted CIFAR batch reader: decodes the Python 2 cPickle layout of the official batches and the
Python 3 protocols 2-5 on small generated files, and refuses malicious pickles without executing anything
(checked in a fresh process with an audit hook and a marker file).

The test files are *written* with a byte-level writer (Python 2 layout) or pickle.dumps; nothing here ever
reads a pickle with pickle.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slperf.common.data import DatasetCorrupt
from slperf.common.data.sources.cifar import read_cifar_batch
from slperf.common.data.sources.safe_pickle import MAX_VALUES, UnsafePickle, safe_load


def _s(text: bytes) -> bytes:
    """SHORT_BINSTRING (Python 2 str) or BINSTRING when long."""
    if len(text) < 256:
        return b"U" + bytes([len(text)]) + text
    return b"T" + struct.pack("<i", len(text)) + text


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def py2_cifar_batch(data: np.ndarray, labels: list[int], label: bytes = b"training batch 1 of 5") -> bytes:
    """The opcode layout cPickle.dump(d, f, 2) gives a CIFAR batch dict under Python 2 with NumPy 1.x."""
    n, width = data.shape
    out = [
        b"\x80\x02}q\x01(",
        _s(b"data"),
        b"q\x02",
        b"cnumpy.core.multiarray\n_reconstruct\nq\x03",
        b"cnumpy\nndarray\nq\x04",
        _int(0),
        b"\x85",
        _s(b"b"),
        b"\x87Rq\x05(",
        _int(1),
        _int(n),
        _int(width),
        b"\x86",
        b"cnumpy\ndtype\nq\x06",
        _s(b"u1"),
        _int(0),
        _int(1),
        b"\x87Rq\x07(",
        _int(3),
        _s(b"|"),
        b"NNN",
        b"J\xff\xff\xff\xffJ\xff\xff\xff\xff",
        _int(0),
        b"tb",
        b"\x89",
        _s(np.ascontiguousarray(data, np.uint8).tobytes()),
        b"tb",
        _s(b"labels"),
        b"]q\x08(",
    ]
    out += [_int(v) for v in labels]
    out += [
        b"e",
        _s(b"batch_label"),
        _s(label),
        _s(b"filenames"),
        b"](",
        *(_s(b"img_%d.png" % i) for i in range(n)),
        b"eu.",
    ]
    return b"".join(out)


def _sample(n: int = 7, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def test_python2_layout_is_well_formed_and_decodes(tmp_path):
    data, labels = _sample()
    blob = py2_cifar_batch(data, labels)
    pickletools.dis(blob, out=open(tmp_path / "dis.txt", "w"))  # a well-formed pickle (dis validates the stream)
    batch = safe_load(blob)
    assert set(batch) == {b"data", b"labels", b"batch_label", b"filenames"}
    assert np.array_equal(batch[b"data"], data) and batch[b"data"].dtype == np.uint8
    assert batch[b"labels"] == labels and batch[b"filenames"][2] == b"img_2.png"
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    x, y = read_cifar_batch(path)
    assert x.shape == (7, 3, 32, 32) and y.dtype == np.int64 and y.tolist() == labels
    assert np.array_equal(x[3, 1], data[3, 1024:2048].reshape(32, 32)), "rows are R, G, B planes, row-major"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("keys", ["bytes", "str"])
def test_python3_protocols(tmp_path, protocol, keys):
    data, labels = _sample(5, seed=protocol)
    k = (lambda s: s.encode()) if keys == "bytes" else (lambda s: s)
    blob = pickle.dumps(
        {k("batch_label"): k("x"), k("labels"): labels, k("data"): data, k("filenames"): [k("a")] * 5},
        protocol=protocol,
    )
    (tmp_path / "b").write_bytes(blob)
    x, y = read_cifar_batch(tmp_path / "b")
    assert np.array_equal(x.reshape(5, -1), data) and y.tolist() == labels


def test_other_numeric_arrays_and_fortran_order():
    arrays = [
        np.arange(12, dtype=">i4").reshape(3, 4),
        np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
        np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        np.array([True, False]),
    ]
    for protocol in (2, 4, 5):
        got = safe_load(pickle.dumps({"a": arrays, "t": (1, None, 2.5, True)}, protocol=protocol))
        for want, arr in zip(arrays, got["a"]):
            assert np.array_equal(arr, want) and arr.dtype == want.dtype.newbyteorder("=")
        assert got["t"] == (1, None, 2.5, True)


# ---- refusing what is not plain data -------------------------------------------------------------------------

MARKER = "slperf-pwned-marker"


def _payloads(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    return {
        # classic: GLOBAL os.system + REDUCE
        "os.system proto0": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "posix.system proto2": b"\x80\x02cposix\nsystem\nq\x00" + _s(cmd) + b"\x85R.",
        # inside an otherwise valid CIFAR batch, after real data
        "in a batch": py2_cifar_batch(*_sample(2))[:-2] + _s(b"x") + b"cos\nsystem\n" + _s(cmd) + b"\x85Ru.",
        "builtins.eval stack_global": b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x1f__import__('os').system('"
        + cmd[:0]
        + b"true')\x85R.",
        "subprocess via INST": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "OBJ": b"(cos\nsystem\n" + _s(cmd) + b"o.",
        "NEWOBJ": b"\x80\x02cos\nsystem\n" + _s(cmd) + b"\x85\x81.",
        # an allowed name with arguments it never takes: _reconstruct(os.system, ...)
        "reconstruct with a foreign class": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85"
        + _s(b"b")
        + b"\x87R.",
        "codecs.encode other codec": b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R.",
        "object dtype": pickle.dumps(np.array([1, "a"], dtype=object), protocol=2),
        "ext code": b"\x80\x02\x82\x01.",
        "persistent id": b"\x80\x02\x8a\x01\x01Q.",
    }


def test_malicious_pickles_are_refused_and_nothing_executes(tmp_path):
    marker = tmp_path / MARKER
    payloads = _payloads(marker)
    # the classic payload really is a call of os.system (shown without unpickling it)
    ops = [op.name for op, _, _ in pickletools.genops(payloads["os.system proto0"])]
    assert ops == ["GLOBAL", "MARK", "STRING", "TUPLE", "REDUCE", "STOP"]
    blobs = tmp_path / "payloads.json"
    blobs.write_text(json.dumps({k: v.hex() for k, v in payloads.items()}))
    script = r"""
import json, sys
from pathlib import Path
from slperf.common.data.sources.safe_pickle import MAX_VALUES, UnsafePickle, safe_load
from slperf.common.data.errors import DatasetCorrupt
payloads = {k: bytes.fromhex(v) for k, v in json.loads(Path(sys.argv[1]).read_text()).items()}
events = []
WATCH = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "exec", "compile",
         "pickle.find_class", "import", "ctypes.dlopen", "builtins.input", "os.remove", "os.rename")
def hook(event, args):
    if event.startswith(WATCH):
        events.append(event + " " + repr(args)[:80])
sys.addaudithook(hook)
results = {}
for name, blob in payloads.items():
    try:
        safe_load(blob, what=name)
        results[name] = "accepted"
    except UnsafePickle as exc:
        results[name] = "refused: " + str(exc)
    except DatasetCorrupt as exc:
        results[name] = "corrupt: " + str(exc)
print(json.dumps({"events": events, "results": results}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(blobs)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["events"] == [], "the reader ran, imported or compiled something"
    assert not marker.exists(), "a payload executed"
    for name, result in out["results"].items():
        assert result.startswith("refused: "), (name, result)
        assert "\n" not in result and "executed nothing" in result
    assert "os.system" in out["results"]["os.system proto0"]
    assert "builtins.eval" in out["results"]["builtins.eval stack_global"]
    assert "opcode INST" in out["results"]["subprocess via INST"]


def test_malicious_cifar_file_is_a_dataset_error(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(_payloads(tmp_path / MARKER)["in a batch"])
    with pytest.raises(UnsafePickle, match="refused, the global os.system") as info:
        read_cifar_batch(path)
    assert isinstance(info.value, DatasetCorrupt) and "\n" not in str(info.value)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize(
    "blob,match",
    [
        (b"", "not a valid pickle"),
        (b"\x80\x02}q\x00", "not a valid pickle"),
        (b"\x80\x02]q\x00K\x01", "not a valid pickle"),
        (b"\x80\x02K\x01K\x02.", "STOP with 2 values"),
        (b"\x80\x02h\x05.", "memo entry 5"),
        (b"\x80\x02e.", "MARK is missing"),
    ],
)
def test_damaged_pickles(blob, match):
    with pytest.raises(DatasetCorrupt, match=match):
        safe_load(blob)


def test_batch_content_checks(tmp_path):
    data, labels = _sample(4)
    cases = {
        "not a dict": pickle.dumps([1, 2], protocol=2),
        "wrong width": pickle.dumps({b"data": data[:, :100], b"labels": labels}, protocol=2),
        "label count": pickle.dumps({b"data": data, b"labels": labels[:3]}, protocol=2),
        "label range": pickle.dumps({b"data": data, b"labels": [0, 1, 2, 10]}, protocol=2),
        "cifar100": pickle.dumps({b"data": data, b"fine_labels": labels}, protocol=2),
        "truncated data": py2_cifar_batch(data, labels).replace(_s(data.tobytes()), _s(data.tobytes()[:-1])),
    }
    expect = {
        "not a dict": "not a CIFAR batch dict",
        "wrong width": "expected a uint8 N×3072",
        "label count": "4 images but 3 labels",
        "label range": "outside 0..9",
        "cifar100": "CIFAR-100",
        "truncated data": "array data hold 12287 bytes",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DatasetCorrupt, match=expect[name]):
            read_cifar_batch(tmp_path / name)


# ---- bounded by what a data set can hold --------------------------------------------------------------------


def _shared_reference_bomb(levels: int) -> bytes:
    """Each level a tuple of two references to the level below: `levels` * 6 bytes that name 2**levels leaves.

    Written opcode by opcode (MARK, EMPTY_LIST, BINPUT 0, then per level BINGET i, BINGET i, TUPLE2, BINPUT i+1,
    and a final TUPLE): a reader that expands memo references instead of sharing them walks 2**levels values.
    """
    out = [b"\x80\x02(]q\x00"]
    for i in range(levels):
        out.append(b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]))
    out.append(b"t.")
    return b"".join(out)


def test_shared_memo_references_are_shared_not_expanded(tmp_path):
    blob = _shared_reference_bomb(40)  # 2**40 leaves; before the fix 20 levels (148 bytes) took 32 s
    assert len(blob) < 300
    assert [op.name for op, _, _ in pickletools.genops(blob)][-3:] == ["BINPUT", "TUPLE", "STOP"]
    top = safe_load(blob)  # expanded, 2**40 leaves would never finish (the suite's timeout would say so)
    assert len(top) == 41 and top[40][0] is top[40][1] is top[39]  # one value per memo entry, shared
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    with pytest.raises(DatasetCorrupt, match="not a CIFAR batch dict"):
        read_cifar_batch(path)


def test_a_value_that_contains_itself_is_refused():
    # EMPTY_LIST, BINPUT 0, MARK, BINGET 0, BINGET 0, APPENDS: the list holds itself twice
    blob = b"\x80\x02]q\x00(h\x00h\x00e."
    with pytest.raises(DatasetCorrupt, match="contains itself"):
        safe_load(blob)


def test_more_values_than_a_data_set_holds_are_refused():
    # a list, MARK, a memoised None, MAX_VALUES references to it, APPENDS: 2 bytes a value
    blob = b"\x80\x02](N\x94" + b"h\x00" * MAX_VALUES + b"e."
    # The refusal is the bound: the count fires at value MAX_VALUES + 1, before the list is built (no wall-clock
    # assert: how long 2 million values take depends on the machine's load, not on the loader).
    with pytest.raises(DatasetCorrupt, match=f"more than {MAX_VALUES} values"):
        safe_load(blob)
    assert len(safe_load(b"\x80\x02](N\x94" + b"h\x00" * 1000 + b"e.")) == 1001


def test_one_array_built_many_times_from_shared_bytes_is_refused():
    raw = bytes(range(256)) * 64  # 16 KiB, once in the file
    one = pickle.dumps(np.frombuffer(raw, dtype=np.uint8), protocol=5)
    names = [op.name for op, _, _ in pickletools.genops(one) if op.name != "FRAME"]
    # memo 2 is _frombuffer, 3 the raw bytes, 9 the dtype (see pickletools.dis of a protocol-5 uint8 array)
    expected = ["SHORT_BINUNICODE", "MEMOIZE"] * 2 + ["STACK_GLOBAL", "MEMOIZE", "MARK", "BINBYTES", "MEMOIZE"]
    assert names[1:10] == expected
    body = one[one.index(b"\x8c") : -1]  # without PROTO, FRAME and STOP: pushes the array
    again = b"h\x02(h\x03h\x09M\x00\x40\x85\x8c\x01Ct\x94R\x94"  # _frombuffer(raw, u1, (16384,), 'C')
    with pytest.raises(DatasetCorrupt, match="twice the pickle's size"):
        safe_load(b"\x80\x05(" + body + again * 8 + b"l.")
    arrays = safe_load(b"\x80\x05(" + body + again + b"l.")  # the bytes made into an array twice: fine
    assert len(arrays) == 2 and all(a.tobytes() == raw for a in arrays)
