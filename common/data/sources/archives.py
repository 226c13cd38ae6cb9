"""Reading files straight out of a Debian package (.deb), without dpkg and without installing anything.

A .deb is a Unix `ar` archive holding `debian-binary`, `control.tar.*` and `data.tar.*`; the package's files
live in the data tarball under their install paths (``./usr/share/...``). `read_ar` parses the ar container
(common format: a 8-byte global header, then per member a 60-byte ASCII header and the payload padded to an
even length); `read_deb_files` opens the data tarball with `tarfile` (xz, gzip, bzip2 or plain) and returns the
requested regular files' bytes. Nothing is written to disk and no member is ever extracted by path.
"""

from __future__ import annotations

import io
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from ..errors import DatasetCorrupt

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
AR_FMAG = b"`\n"


def read_ar(data: bytes, *, what: str = "ar archive") -> dict[str, bytes]:
    """Member name -> payload of an `ar` archive (common / GNU format; BSD long names are refused).

    Raises DatasetCorrupt for a bad magic, a malformed or truncated header, a payload running past the end,
    or a repeated member name.
    """
    if not data.startswith(AR_MAGIC):
        raise DatasetCorrupt(f"{what}: not an ar archive (bad magic {data[:8]!r})")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos < len(data):
        if data[pos : pos + 1] == b"\n":  # padding byte of the previous member
            pos += 1
            continue
        header = data[pos : pos + AR_HEADER]
        if len(header) < AR_HEADER:
            raise DatasetCorrupt(f"{what}: truncated member header at byte {pos}")
        if header[58:60] != AR_FMAG:
            raise DatasetCorrupt(f"{what}: malformed member header at byte {pos}")
        try:
            name = header[0:16].decode("ascii").rstrip(" ")
            size = int(header[48:58].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise DatasetCorrupt(f"{what}: unreadable member header at byte {pos}") from None
        if name.startswith("#1/"):
            raise DatasetCorrupt(f"{what}: BSD long member names are not supported")
        if name.endswith("/") and name not in ("/", "//"):
            name = name[:-1]  # GNU terminates names with '/'
        if size < 0:
            raise DatasetCorrupt(f"{what}: negative member size at byte {pos}")
        start = pos + AR_HEADER
        end = start + size
        if end > len(data):
            raise DatasetCorrupt(f"{what}: member {name!r} runs past the end of the file ({size} bytes declared)")
        if name in ("/", "//"):  # symbol table / GNU long-name table: not used by .deb files
            pos = end + (size & 1)
            continue
        if name in members:
            raise DatasetCorrupt(f"{what}: member {name!r} appears twice")
        members[name] = data[start:end]
        pos = end + (size & 1)
    return members


def _data_member(members: dict[str, bytes], what: str) -> tuple[str, bytes]:
    for name in ("data.tar.xz", "data.tar.gz", "data.tar.bz2", "data.tar"):
        if name in members:
            return name, members[name]
    found = ", ".join(sorted(members)) or "nothing"
    if "data.tar.zst" in members:
        raise DatasetCorrupt(f"{what}: data.tar.zst is not supported by this reader (Python has no zstd)")
    raise DatasetCorrupt(f"{what}: no data.tar.* member (found {found})")


def _normal(path: str) -> str:
    """Tar member names as 'usr/share/...' (no leading './' or '/')."""
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def read_deb_files(deb: str | os.PathLike[str], paths: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the given files (install paths like 'usr/share/x/y') out of a .deb's data tarball.

    Raises DatasetCorrupt when the package is not a valid .deb or any requested file is missing or not a
    regular file.
    """
    what = Path(deb).name
    wanted = {_normal(p) for p in paths}
    try:
        raw = Path(deb).read_bytes()
    except OSError as exc:
        raise DatasetCorrupt(f"cannot read {deb} ({exc.strerror or exc})") from None
    members = read_ar(raw, what=what)
    if members.get("debian-binary", b"").split(b"\n")[0].strip()[:2] != b"2.":
        raise DatasetCorrupt(f"{what}: not a Debian binary package (no debian-binary 2.x member)")
    name, payload = _data_member(members, what)
    out: dict[str, bytes] = {}
    try:
        # Stream mode: one sequential pass over the compressed tarball, reading only the wanted members.
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r|*") as tar:
            for info in tar:
                key = _normal(info.name)
                if key not in wanted:
                    continue
                if not info.isreg():
                    raise DatasetCorrupt(f"{what}: {key} in {name} is not a regular file")
                fh = tar.extractfile(info)
                out[key] = fh.read() if fh is not None else b""
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as exc:
        raise DatasetCorrupt(f"{what}: {name} is not a readable tarball ({exc})") from None
    missing = sorted(wanted - set(out))
    if missing:
        raise DatasetCorrupt(f"{what}: {name} lacks {', '.join(missing)}")
    return out
