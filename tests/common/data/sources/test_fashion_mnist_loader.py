"""Fashion-MNIST out of the pinned Debian package (ar → data.tar.xz → IDX .gz), from IDX files in data_dir,
the ar/.deb reader on generated archives, and apt-get failures as one-line DatasetUnavailable errors.

Uses the real dataset-fashion-mnist .deb from the default cache ($SLPERF_CACHE or ~/.cache/slperf), fetched
with `apt-get download` the first time; decodes go into temporary cache dirs.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from file_encoders import encode_idx, write_ar

from slperf.common.data import DatasetCorrupt, DatasetUnavailable, load_dataset
from slperf.common.data.sources import artifacts
from slperf.common.data.sources.archives import read_ar, read_deb_files
from slperf.common.data.sources.fashion_mnist import DEB_DIR, read_fashion_deb

FIRST_TRAIN = [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
FIRST_TEST = [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


@pytest.fixture(scope="module")
def deb() -> Path:
    return artifacts.ensure_artifact("dataset-fashion-mnist")


@pytest.fixture(scope="module")
def decoded(deb, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fmnist-cache")
    (cache / "artifacts").mkdir()
    try:
        os.link(deb, cache / "artifacts" / deb.name)
    except OSError:
        shutil.copyfile(deb, cache / "artifacts" / deb.name)
    t0 = time.perf_counter()
    ds = load_dataset("fashionmnist", cache_dir=cache)
    return cache, ds, time.perf_counter() - t0


def test_pin_matches_research_note():
    a = artifacts.ARTIFACTS["dataset-fashion-mnist"]
    assert a.fetcher == "apt" and a.requirement == "dataset-fashion-mnist=0.0~git20200523.55506a9-1"
    assert a.filename == "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"
    assert a.sha256 == "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
    assert a.size == 30_900_652


def test_first_load_decodes_the_deb(decoded):
    cache, ds, seconds = decoded
    assert "decoded into" in ds.source and "dataset-fashion-mnist=" in ds.source
    a = ds.arrays
    assert a.train_x.shape == (60000, 1, 28, 28) and a.train_x.dtype == np.uint8
    assert a.test_x.shape == (10000, 1, 28, 28) and a.test_x.dtype == np.uint8
    assert np.bincount(a.train_y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(a.test_y, minlength=10).tolist() == [1000] * 10
    assert a.train_y[:10].tolist() == FIRST_TRAIN and a.test_y[:10].tolist() == FIRST_TEST
    assert (cache / "arrays" / "fashionmnist" / "train_x.npy").is_file()
    assert not any(p.name.startswith(".tmp-") for p in (cache / "artifacts").iterdir())
    assert seconds < 20


def test_spec_and_pixel_statistics(decoded):
    _, ds, _ = decoded
    assert ds.spec.mean == (0.2860,) and ds.spec.std == (0.3530,) and ds.spec.kind == "image"
    assert ds.spec.augment is None and not ds.spec.synthetic
    hist = np.bincount(np.asarray(ds.arrays.train_x).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256) / 255.0
    mean = float((hist * levels).sum() / hist.sum())
    std = float(np.sqrt((hist * (levels - mean) ** 2).sum() / hist.sum()))
    assert abs(mean - 0.2860) < 5e-4 and abs(std - 0.3530) < 5e-4


def test_cached_load_maps_the_arrays(decoded):
    cache, first, _ = decoded
    ds = load_dataset("fashionmnist", cache_dir=cache)  # mapped, not decoded again: the memmap says so, not a clock
    assert ds.source.startswith("cache ") and isinstance(ds.arrays.train_x, np.memmap)
    assert np.array_equal(ds.arrays.test_y, first.arrays.test_y)


def test_idx_files_in_data_dir(decoded, tmp_path):
    _, ref, _ = decoded
    folder = tmp_path / "data" / "FashionMNIST" / "raw"  # torchvision's layout
    folder.mkdir(parents=True)
    names = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    for key, base in names.items():
        arr = np.asarray(getattr(ref.arrays, key))
        arr = arr.reshape(-1, 28, 28) if key.endswith("_x") else arr.astype(np.uint8)
        data = encode_idx(arr)
        if key.endswith("_x"):
            (folder / base).write_bytes(data)
        else:
            (folder / f"{base}.gz").write_bytes(gzip.compress(data, compresslevel=1))
    cache = tmp_path / "cache"
    ds = load_dataset("fashionmnist", data_dir=tmp_path / "data", cache_dir=cache)
    for key in names:
        assert np.array_equal(getattr(ds.arrays, key), getattr(ref.arrays, key)), key
    assert not (cache / "artifacts").exists(), "the .deb is not needed when data_dir is given"
    assert "fashionmnist-local-" in load_dataset("fashionmnist", data_dir=tmp_path / "data", cache_dir=cache).source


def test_data_dir_without_files_names_the_fix(tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("fashionmnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("Fashion-MNIST is not available") and "t10k-images-idx3-ubyte" in msg


def test_data_dir_with_unbalanced_labels(decoded, tmp_path):
    _, ref, _ = decoded
    folder = tmp_path / "data"
    folder.mkdir()
    y = np.asarray(ref.arrays.test_y).astype(np.uint8)
    y[0] = (y[0] + 1) % 10
    (folder / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(y))
    (folder / "t10k-images-idx3-ubyte").write_bytes(encode_idx(np.zeros((10000, 28, 28), np.uint8)))
    (folder / "train-labels-idx1-ubyte").write_bytes(encode_idx(np.asarray(ref.arrays.train_y).astype(np.uint8)))
    (folder / "train-images-idx3-ubyte").write_bytes(encode_idx(np.zeros((60000, 28, 28), np.uint8)))
    with pytest.raises(DatasetCorrupt, match="test label counts .* are not 1000 per class"):
        load_dataset("fashionmnist", data_dir=folder, cache_dir=tmp_path / "cache")


# ---- the ar / .deb reader on generated archives -------------------------------------------------------------


def _tar(files: dict[str, bytes], mode: str = "w:xz", symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


def _deb(
    tmp_path: Path,
    files: dict[str, bytes],
    *,
    data_name: str = "data.tar.xz",
    mode: str = "w:xz",
    symlink: str | None = None,
) -> Path:
    path = tmp_path / "pkg.deb"
    path.write_bytes(
        write_ar(
            {
                "debian-binary": b"2.0\n",
                "control.tar.xz": _tar({"./control": b"Package: x\n"}),
                data_name: _tar(files, mode, symlink),
            }
        )
    )
    return path


def test_ar_round_trip_and_odd_sizes():
    members = {"debian-binary": b"2.0\n", "a": b"x", "bb": b"", "c.tar": bytes(range(256)) * 3 + b"z"}
    assert read_ar(write_ar(members)) == members


@pytest.mark.parametrize(
    "mangle,match",
    [
        (lambda b: b"!<arch>X" + b[8:], "not an ar archive"),
        (lambda b: b[:-5], "runs past the end"),
        (lambda b: b[:30], "truncated member header"),
        (lambda b: b[:66] + b"XX" + b[68:], "malformed member header"),
    ],
)
def test_ar_rejects_damage(mangle, match):
    good = write_ar({"debian-binary": b"2.0\n", "data.tar.xz": b"0123456789"})
    with pytest.raises(DatasetCorrupt, match=match):
        read_ar(mangle(good))


def test_deb_files_from_xz_and_gz_data_tarballs(tmp_path):
    files = {"./usr/share/x/a.bin": b"alpha", "./usr/share/x/b.bin": b"beta" * 1000, "./usr/share/doc/c": b"c"}
    for data_name, mode in (("data.tar.xz", "w:xz"), ("data.tar.gz", "w:gz"), ("data.tar", "w")):
        deb = _deb(tmp_path, files, data_name=data_name, mode=mode)
        got = read_deb_files(deb, ["usr/share/x/a.bin", "/usr/share/x/b.bin"])
        assert got == {"usr/share/x/a.bin": b"alpha", "usr/share/x/b.bin": b"beta" * 1000}


def test_deb_reader_errors(tmp_path):
    deb = _deb(tmp_path, {"./usr/share/x/a": b"a"})
    with pytest.raises(DatasetCorrupt, match="lacks usr/share/x/missing"):
        read_deb_files(deb, ["usr/share/x/missing"])
    deb = _deb(tmp_path, {"./usr/share/x/a": b"a"}, symlink="./usr/share/x/link")
    with pytest.raises(DatasetCorrupt, match="not a regular file"):
        read_deb_files(deb, ["usr/share/x/link"])
    (tmp_path / "z.deb").write_bytes(write_ar({"debian-binary": b"2.0\n", "data.tar.zst": b"\x28\xb5\x2f\xfd"}))
    with pytest.raises(DatasetCorrupt, match="zst"):
        read_deb_files(tmp_path / "z.deb", ["a"])
    (tmp_path / "n.deb").write_bytes(write_ar({"debian-binary": b"2.0\n", "data.tar.xz": b"not xz at all"}))
    with pytest.raises(DatasetCorrupt, match="not a readable tarball"):
        read_deb_files(tmp_path / "n.deb", ["a"])
    (tmp_path / "v.deb").write_bytes(write_ar({"debian-binary": b"9.9\n", "data.tar": b""}))
    with pytest.raises(DatasetCorrupt, match="not a Debian binary package"):
        read_deb_files(tmp_path / "v.deb", ["a"])


def test_fashion_reader_on_a_generated_deb(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(6, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([3, 4], np.uint8),
    }
    deb = _deb(tmp_path, {f"./{DEB_DIR}/{n}.gz": gzip.compress(encode_idx(a)) for n, a in arrays.items()})
    raw = read_fashion_deb(deb)
    assert np.array_equal(raw["train_x"], arrays["train-images-idx3-ubyte"])
    assert raw["test_y"].tolist() == [3, 4]


# ---- apt-get failures ---------------------------------------------------------------------------------------


def _offline_apt(tmp_path: Path) -> tuple[str, ...]:
    """apt options that use empty private state and no sources: apt never touches the network or the system."""
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (tmp_path / "apt" / sub).mkdir(parents=True, exist_ok=True)
    (tmp_path / "apt" / "sources.list").write_text("")
    a = tmp_path / "apt"
    return (
        "-o",
        f"Dir::Etc::SourceList={a / 'sources.list'}",
        "-o",
        f"Dir::Etc::SourceParts={a / 'parts'}",
        "-o",
        f"Dir::State::Lists={a / 'lists'}",
        "-o",
        f"Dir::Cache={a / 'cache'}",
    )


def _bogus(tmp_path: Path) -> artifacts.Artifact:
    return dataclasses.replace(
        artifacts.ARTIFACTS["dataset-fashion-mnist"],
        requirement="slperf-no-such-package=1.0",
        filename="slperf-no-such-package_1.0_all.deb",
        sha256="0" * 64,
        apt_options=_offline_apt(tmp_path),
    )


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_apt_failure_is_one_line_naming_the_fix(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DatasetUnavailable) as info:
        artifacts.ensure_artifact(_bogus(tmp_path), tmp_path / "cache")
    assert time.monotonic() - t0 < 30
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("Fashion-MNIST is not available offline: ")
    assert "slperf-no-such-package=1.0" in msg and "apt-get download" in msg and "data_dir" in msg
    assert list((tmp_path / "cache" / "artifacts").iterdir()) == [], "no temporary folder left behind"


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_apt_without_root_asks_for_apt_get_update(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DatasetUnavailable, match=r"package lists need `sudo apt-get update`") as info:
        artifacts.ensure_artifact(_bogus(tmp_path), tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_apt_update_is_tried_once_as_root(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if "update" in cmd:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package slperf-no-such-package")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(DatasetUnavailable, match="apt-get exited 100: E: Unable to locate package"):
        artifacts.ensure_artifact(_bogus(tmp_path), tmp_path / "cache")
    assert [c[-2:] if "download" in c else c[-1:] for c in calls] == [
        ["download", "slperf-no-such-package=1.0"],
        ["update"],
        ["download", "slperf-no-such-package=1.0"],
    ]


def test_missing_apt_get_binary(tmp_path, monkeypatch):
    def no_binary(cmd, **kw):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(subprocess, "run", no_binary)
    with pytest.raises(DatasetUnavailable, match="could not run apt-get"):
        artifacts.ensure_artifact(_bogus(tmp_path), tmp_path / "cache")
