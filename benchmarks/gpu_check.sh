#!/usr/bin/env bash
# The GPU checks in one go, for whoever has a CUDA machine (CI has none; these are skipped there):
#   1. the tests marked `cuda` (a federation with the server, the clients or both on the GPU ends where the CPU one
#      ends; amp=bf16 and deterministic on CUDA; tensors cross through pinned host memory) and the device unit tests;
#   2. the split-overhead benchmark on cuda and on cpu in the same sitting, printing both ratios.
# Usage: benchmarks/gpu_check.sh            (SAMPLES=15000 EPOCHS=3 BATCHES="64 128" PYTHON=.venv/bin/python)
# Results: benchmarks/results/gpu/split_overhead_{cuda,cpu}.json; exit status non-zero when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu}
SAMPLES=${SAMPLES:-15000}
EPOCHS=${EPOCHS:-3}
BATCHES=${BATCHES:-"64 128"}

"$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}); run this on a GPU machine")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PYEOF

export CUBLAS_WORKSPACE_CONFIG=:4096:8  # for the deterministic tests; the federation sets it for its own processes
echo "== CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -rs tests/common/test_devices.py tests/common/paradigms/test_devices_in_federation.py

echo "== split overhead on cuda, then on cpu (same sitting)"
# shellcheck disable=SC2086
"$PY" -m benchmarks.bench_split_overhead --device cuda --samples "$SAMPLES" --epochs "$EPOCHS" --batch-sizes $BATCHES --results-dir "$OUT"
# shellcheck disable=SC2086
"$PY" -m benchmarks.bench_split_overhead --device cpu --samples "$SAMPLES" --epochs "$EPOCHS" --batch-sizes $BATCHES --results-dir "$OUT"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
for name in ("split_overhead_cuda", "split_overhead"):
    data = json.loads((Path(sys.argv[1]) / f"{name}.json").read_text())
    for case in data["cases"]:
        print(f"{data['device']:>5} batch {case['batch_size']:>4}: one process {case['reference_epoch_seconds']['median_used']:.2f} s/epoch, "
              f"split {case['federation_median']:.2f} s/round, ratio {case['ratio']:.2f} (of minima {case['ratio_of_minima']:.2f})")
PYEOF
