"""fetch_dataset against a local http.server on 127.0.0.1 (no outside host is ever contacted): downloads,
checksums (file and gunzipped content), mirrors, failures as one-line errors, and the CIFAR tarball unpack."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from slperf.common.data import DatasetUnavailable, load_dataset
from slperf.common.data.sources import cifar
from slperf.common.data.sources.fetch import FETCH_TABLE, FetchPlan, RemoteFile, download_dir, fetch_dataset

UNREACHABLE = "http://127.0.0.1:9/"  # nothing listens on the discard port


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """(root folder, base URL) of a local HTTP server serving root; stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_download_verify_and_reuse(server, tmp_path):
    root, url = server
    a, b = b"alpha" * 1000, b"beta\n" * 10
    (root / "a.bin").write_bytes(a)
    (root / "b.txt.gz").write_bytes(gzip.compress(b))
    table = {
        "toy": FetchPlan(
            "Toy",
            (
                RemoteFile("a.bin", (url + "a.bin",), _sha(a), size=len(a)),
                RemoteFile("b.txt.gz", (url + "b.txt.gz",), _sha(b), of="gunzip"),
            ),
        )
    }
    lines: list[str] = []
    folder = fetch_dataset("toy", cache_dir=tmp_path / "cache", table=table, echo=lines.append)
    assert folder == download_dir("toy", tmp_path / "cache")
    assert (folder / "a.bin").read_bytes() == a and gzip.decompress((folder / "b.txt.gz").read_bytes()) == b
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "b.txt.gz"], "no partial files left"
    assert any("downloading" in line for line in lines)
    # a second fetch finds verified files and downloads nothing (the server's copies are gone)
    (root / "a.bin").unlink()
    (root / "b.txt.gz").unlink()
    lines.clear()
    assert fetch_dataset("toy", cache_dir=tmp_path / "cache", table=table, echo=lines.append) == folder
    assert all("already there" in line for line in lines)


def test_gunzip_checksum_accepts_a_recompressed_copy(server, tmp_path):
    root, url = server
    content = bytes(range(256)) * 50
    (root / "x.gz").write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    table = {"toy": FetchPlan("Toy", (RemoteFile("x.gz", (url + "x.gz",), _sha(content), of="gunzip"),))}
    folder = fetch_dataset("toy", dest=tmp_path / "d", table=table)
    assert folder == tmp_path / "d" and (folder / "x.gz").is_file()


def test_checksum_mismatch_is_refused_and_deleted(server, tmp_path):
    root, url = server
    (root / "a.bin").write_bytes(b"tampered")
    table = {"toy": FetchPlan("Toy", (RemoteFile("a.bin", (url + "a.bin",), "md5:" + "0" * 32),))}
    with pytest.raises(DatasetUnavailable) as info:
        fetch_dataset("toy", dest=tmp_path / "d", table=table)
    msg = str(info.value)
    assert "\n" not in msg and "checksum mismatch: md5" in msg and "a.bin" in msg
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []


def test_size_announced_by_the_server_is_checked(server, tmp_path):
    root, url = server
    (root / "a.bin").write_bytes(b"12345")
    table = {"toy": FetchPlan("Toy", (RemoteFile("a.bin", (url + "a.bin",), _sha(b"12345"), size=4),))}
    with pytest.raises(DatasetUnavailable, match="announces 5 bytes, expected 4"):
        fetch_dataset("toy", dest=tmp_path / "d", table=table)


def test_mirrors_are_tried_in_order(server, tmp_path):
    root, url = server
    data = b"mirror"
    (root / "good").mkdir()
    (root / "good" / "f").write_bytes(data)
    table = {
        "toy": FetchPlan("Toy", (RemoteFile("f", (UNREACHABLE + "f", url + "missing/f", url + "good/f"), _sha(data)),))
    }
    folder = fetch_dataset("toy", dest=tmp_path / "d", table=table)
    assert (folder / "f").read_bytes() == data


def test_unreachable_host_fails_fast_with_one_line(tmp_path):
    table = {
        "toy": FetchPlan(
            "Toy",
            (RemoteFile("f", (UNREACHABLE + "f",), "sha256:" + "0" * 64),),
            host_hint="the toy host",
            alternative="use toy-synthetic",
        )
    }
    t0 = time.monotonic()
    with pytest.raises(DatasetUnavailable) as info:
        fetch_dataset("toy", cache_dir=tmp_path / "cache", table=table, timeout=5)
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("Toy could not be downloaded: f failed from http://127.0.0.1:9/f (")
    assert "cannot reach the toy host" in msg and "slperf data fetch toy --dest DIR" in msg and "toy-synthetic" in msg
    assert not download_dir("toy", tmp_path / "cache").exists(), "no empty folder left behind"


def test_http_error_is_named(server, tmp_path):
    _, url = server
    table = {"toy": FetchPlan("Toy", (RemoteFile("f", (url + "nope",), "sha256:" + "0" * 64),))}
    with pytest.raises(DatasetUnavailable, match="HTTP 404"):
        fetch_dataset("toy", dest=tmp_path / "d", table=table)


def _cifar_tarball(a, extra: dict[str, bytes] | None = None) -> bytes:
    files = {}
    parts = np.array_split(np.arange(len(a.train_y)), 5)
    for i, idx in enumerate(parts, 1):
        files[f"cifar-10-batches-py/data_batch_{i}"] = pickle.dumps(
            {b"data": a.train_x[idx].reshape(len(idx), -1), b"labels": a.train_y[idx].tolist()}, protocol=2
        )
    files["cifar-10-batches-py/test_batch"] = pickle.dumps(
        {b"data": a.test_x.reshape(len(a.test_y), -1), b"labels": a.test_y.tolist()}, protocol=2
    )
    files.update(extra or {})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cifar_tarball_is_unpacked_safely_and_loads(server, tmp_path, monkeypatch):
    root, url = server
    monkeypatch.setattr(cifar, "TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(cifar, "TEST_PER_CLASS", 1)
    a = cifar.generate_synthetic_cifar(20, 10, seed=5)
    blob = _cifar_tarball(
        a,
        {
            "../../evil.txt": b"x",
            "/tmp/abs-evil.txt": b"x",
            "cifar-10-batches-py/../../evil2.txt": b"x",
            "cifar-10-batches-py/other": b"x",
        },
    )
    (root / "cifar-10-python.tar.gz").write_bytes(blob)
    md5 = hashlib.md5(blob).hexdigest()
    plan = FetchPlan(
        "CIFAR-10",
        (RemoteFile("cifar-10-python.tar.gz", (url + "cifar-10-python.tar.gz",), f"md5:{md5}", size=len(blob)),),
        unpack="cifar10",
    )
    cache = tmp_path / "cache"
    folder = fetch_dataset("cifar10", cache_dir=cache, table={"cifar10": plan})
    batches = folder / "cifar-10-batches-py"
    assert sorted(p.name for p in batches.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    )
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py"], "tarball removed, nothing else"
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/abs-evil.txt").exists()
    ds = load_dataset("cifar10", cache_dir=cache)  # found in <cache>/downloads/cifar10 without data_dir
    assert np.array_equal(ds.arrays.train_x, a.train_x) and np.array_equal(ds.arrays.test_y, a.test_y)
    # already unpacked: nothing is downloaded again
    (root / "cifar-10-python.tar.gz").unlink()
    assert fetch_dataset("cifar10", cache_dir=cache, table={"cifar10": plan}) == folder


def test_unknown_name_and_table_entries():
    with pytest.raises(ValueError, match="knows adult, cifar10, fashionmnist, german, mnist"):
        fetch_dataset("no-such-set")
    for name, plan in FETCH_TABLE.items():
        assert plan.files and all(f.urls for f in plan.files), name
        for f in plan.files:
            assert all(u.startswith(("https://", "http://")) for u in f.urls)
    cifar_file = FETCH_TABLE["cifar10"].files[0]
    assert cifar_file.checksum == "md5:c58f30108f718f92721af3b95e74349a" and cifar_file.size == 170_498_071
    with pytest.raises(ValueError, match="checksum must be"):
        RemoteFile("x", ("http://h/x",), "crc32:1234")
    with pytest.raises(ValueError, match="plain file name"):
        RemoteFile("../x", ("http://h/x",), "md5:00")
