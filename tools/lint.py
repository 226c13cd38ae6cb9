"""`make lint`: ruff (lint and format check), mypy and import-linter over the tree; non-zero if any fails.

mypy and import-linter resolve modules from the file system, and the installed package maps the folders
``common/``, ``slserver/``, ``slclient/`` and ``fedserver/`` into ``slperf.*`` (see ``[tool.setuptools]`` in
pyproject.toml), which neither can follow. So this script first lays out ``.lint/tree/slperf`` as the package is
installed: real directories, each source file a symlink to the one in the tree (what setuptools' strict editable mode
does), and points both tools at it. Errors name the symlink path, ``.lint/tree/slperf/common/...``, which is
``common/...`` in the tree.

    python tools/lint.py [--only ruff|format|mypy|imports ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".lint" / "tree"
# The installed layout, read from pyproject's package-dir (so a new mapped folder cannot be forgotten here).
MAPPED = {
    package.replace(".", "/"): folder
    for package, folder in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ].items()
}
MAPPED_DIRS = {folder for package, folder in MAPPED.items() if package != "slperf"}
# Strict typing covers the core first: protocol types, wire, transport, paradigms and both daemons.
MYPY_PACKAGES = [
    "slperf.common.protocol",
    "slperf.common.wire",
    "slperf.common.transport",
    "slperf.common.paradigms",
    "slperf.common.privacy",
    "slperf.slserver",
    "slperf.slclient",
    "slperf.fedserver",
]


def lay_out_tree() -> None:
    shutil.rmtree(TREE, ignore_errors=True)
    for target, source in MAPPED.items():
        for dirpath, dirnames, filenames in os.walk(ROOT / source):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not (target == "slperf" and d in MAPPED_DIRS)]
            rel = Path(dirpath).relative_to(ROOT / source)
            out = TREE / target / rel
            out.mkdir(parents=True, exist_ok=True)
            for name in filenames:
                if name.endswith((".py", ".pyi")):
                    (out / name).symlink_to(Path(dirpath) / name)


def run(name: str, argv: list[str], **kwargs: object) -> bool:
    print(f"== {name}: {' '.join(argv[:4])} ...", flush=True)
    ok = subprocess.run(argv, **kwargs).returncode == 0  # type: ignore[call-overload]
    print(f"== {name}: {'ok' if ok else 'FAILED'}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=["ruff", "format", "mypy", "imports"])
    checks = parser.parse_args().only or ["ruff", "format", "mypy", "imports"]
    py = sys.executable
    results = []
    if "ruff" in checks:
        results.append(run("ruff", [py, "-m", "ruff", "check", "."], cwd=ROOT))
    if "format" in checks:
        results.append(run("ruff format", [py, "-m", "ruff", "format", "--check", "."], cwd=ROOT))
    if "mypy" in checks or "imports" in checks:
        lay_out_tree()
    if "mypy" in checks:
        argv = [py, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        for package in MYPY_PACKAGES:
            argv += ["-p", package]
        env = {**os.environ, "MYPYPATH": str(TREE)}
        results.append(run("mypy", argv, cwd=ROOT, env=env))
    if "imports" in checks:
        # Without site's .pth processing the editable install's finder is not active, so `slperf` is the laid-out
        # tree; import-linter also puts its working directory first on sys.path, hence cwd=TREE.
        site = sysconfig.get_paths()["purelib"]
        argv = ["lint-imports", "--no-cache", "--config", str(ROOT / "pyproject.toml")]
        code = (
            f"import sys; sys.path[:0] = {[str(TREE), site]!r}; sys.argv = {argv!r}\n"
            "from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
        )
        results.append(run("import-linter", [py, "-S", "-c", code], cwd=TREE))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
