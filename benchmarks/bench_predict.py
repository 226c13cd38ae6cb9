"""Split inference on loopback: latency per request and throughput per batch size.

A server process (``slperf server --insecure``) serves a run folder written the way a finished splitfed_v1 (LeNet,
MNIST shape, cut after block 1) run leaves it; this process plays the silo: its bottom on random uint8 images,
``Predict`` for the top. Latency: one batch in flight (``window=1``), median and p95 of the round trip per request
(bottom + wire + top + decode). Throughput: samples per second over all batches with the default window of 4.

    python -m benchmarks.bench_predict [--samples 2048] [--sizes 1,32,256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

from slperf.common.config import RunConfig
from slperf.common.data.registry import DATASETS
from slperf.common.models import build_split
from slperf.common.paradigms.kit.inference import ModelFacts, build_segment
from slperf.slclient.predict import LocalModel, Predictor
from slperf.slserver.served_models import write_serving
from slperf.slserver.server import READY_PREFIX


def _prepare(runs: Path, config: RunConfig) -> LocalModel:
    folder = runs / "bench"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    (folder / "state.json").write_text(json.dumps({"state": "finished"}))
    split = build_split(config.model, (1, 28, 28), 10, config.seed, [config.split_layer])
    write_serving(folder, "bench", config, ["c1"], {"top": split.segments[1].state_dict()})
    facts = ModelFacts(config.model, (1, 28, 28), 10, config.seed)
    bottom = build_segment(facts, (0, config.split_layer), split.segments[0].state_dict())
    return LocalModel("bench", "c1", DATASETS["mnist"], (1, 28, 28), bottom, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048, help="samples per throughput measurement")
    parser.add_argument("--sizes", default="1,32,256")
    parser.add_argument("--latency-requests", type=int, default=200)
    args = parser.parse_args()
    config = RunConfig(paradigm="splitfed_v1", dataset="mnist", clients=1, client_ids=["c1"], seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        model = _prepare(runs, config)
        cmd = [sys.executable, "-m", "slperf.cli", "server", "--insecure", "--address", "127.0.0.1:0"]
        cmd += ["--runs-dir", str(runs), "--torch-threads", "1"]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert server.stdout is not None
            line = server.stdout.readline().decode().strip()
            assert line.startswith(READY_PREFIX), "the server did not start"
            channel = grpc.insecure_channel(f"127.0.0.1:{line[len(READY_PREFIX) :]}")
            rng = np.random.default_rng(0)
            print(f"{'batch':>6} {'latency p50 ms':>15} {'p95 ms':>8} {'throughput samples/s':>21}")
            for size in [int(s) for s in args.sizes.split(",")]:
                images = rng.integers(0, 256, size=(max(args.samples, size), 1, 28, 28), dtype=np.uint8)
                one = images[:size]
                lockstep = Predictor(channel, model, window=1)
                lockstep.predict(one, size)  # warm-up: the server loads the model on the first call
                times = []
                requests = max(10, args.latency_requests // max(1, size // 8))
                for _ in range(requests):
                    start = time.perf_counter()
                    lockstep.predict(one, size)
                    times.append(time.perf_counter() - start)
                start = time.perf_counter()
                Predictor(channel, model).predict(images, size)
                rate = len(images) / (time.perf_counter() - start)
                p50 = 1000 * statistics.median(times)
                p95 = 1000 * sorted(times)[int(0.95 * (len(times) - 1))]
                print(f"{size:>6} {p50:>15.2f} {p95:>8.2f} {rate:>21.0f}")
            channel.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
