"""`make test-stress`: the suite under CPU load and in random order, several times, to find tests that pass only
by luck of scheduling (issue 18). CI keeps running the plain suite.

    python tools/stress.py [--repeats 3] [--burners N] [--seed S] [-- PYTEST ARGS...]

One busy-loop process per core (``--burners``, default the number of cores) runs for the whole stress run and is
stopped however the run ends. Each repetition shuffles the test order with pytest-randomly (off in the plain
suite, see ``addopts`` in pyproject.toml); its seed is printed (``--seed`` plus the repetition number when given),
so a failure replays with ``python -m pytest -p randomly --randomly-seed=SEED``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _burn() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    first = args.seed if args.seed is not None else random.randrange(1 << 30)
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    results: list[tuple[int, int, float]] = []
    try:
        for burner in burners:
            burner.start()
        for i in range(args.repeats):
            seed = first + i
            print(
                f"== stress run {i + 1}/{args.repeats}: {args.burners} CPU burners, random order, seed {seed}",
                flush=True,
            )
            started = time.monotonic()
            argv = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "randomly",
                f"--randomly-seed={seed}",
                "-p",
                "no:cacheprovider",
                *args.pytest_args,
            ]
            code = subprocess.run(argv, cwd=ROOT).returncode
            results.append((seed, code, time.monotonic() - started))
    finally:
        for burner in burners:
            burner.terminate()
        for burner in burners:
            burner.join()
    for seed, code, seconds in results:
        print(f"seed {seed}: {'passed' if code == 0 else f'FAILED (pytest exit {code})'} in {seconds / 60:.1f} min")
    return 0 if results and all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
