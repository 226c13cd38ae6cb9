"""The centralized baseline: the unsplit model trained in one process on all of the run's (capped) training
data, with the same budget as a federation of the same config, so that every paradigm is compared with what
the same model reaches without a cut.

Same budget means: the same model and initial weights (``build_model`` with the run's seed), the same SGD
(``steps.make_optimizer``: lr, momentum, weight decay), the same batch size, the same number of passes
(``epochs``) over the same training pool (``shards.train_indices``: everything, or the seeded
``max_train_samples`` subset that the federation's partition splits), and the same evaluation set (the seeded
``max_test_samples`` subset) after every pass. Partition and client count do not apply: one process holds
all the data. Batches come from ``ShardLoader`` with client index 0, so a one-client ``homo`` federation and
this baseline see the same batches in the same order.

    result = train_centralized(config)          # RunConfig or a mapping of config keys
    result["test_accuracy"], result["curve"]    # final accuracy, one point per epoch

``python -m slperf.bench.centralized CONFIG.yaml --out RESULT.json`` runs it as its own process (how the
benchmark measures its peak memory) and prints one JSON line per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slperf.bench.memory import self_peak_rss_bytes
from slperf.bench.suite import CENTRALIZED
from slperf.common.config import RunConfig
from slperf.common.config_loader import config_from_mapping, load_config
from slperf.common.data import ShardLoader, cap_indices, load_dataset
from slperf.common.fsutil import atomic_write
from slperf.common.models import build_model
from slperf.common.paradigms.kit.steps import make_optimizer
from slperf.common.shards import train_indices


def _as_config(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    cfg, _ = config_from_mapping(dict(config), source="centralized config")
    return cfg


@torch.no_grad()
def _evaluate(model: torch.nn.Module, loader: ShardLoader) -> tuple[float, float, int]:
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    for x, y in loader.batches(0, shuffle=False):
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        count += int(y.shape[0])
    return (correct / count if count else 0.0), (loss_sum / count if count else 0.0), count


def train_centralized(
    config: RunConfig | Mapping[str, Any],
    *,
    cache_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Trains the unsplit model on the whole (capped) training pool; evaluates after every epoch.

    Returns ``paradigm`` ("centralized"), ``dataset``, ``model``, ``rounds``, ``train_samples``,
    ``test_samples``, ``test_accuracy`` (final, 0-1), ``best_test_accuracy``, ``train_seconds`` (sum of the
    epochs, evaluation included, as a federation's round times are), ``curve`` (per epoch: ``round``
    1-based, ``test_accuracy``, ``test_loss``, ``train_loss``, ``train_accuracy``, ``round_seconds``,
    ``seconds`` = cumulative) and ``bytes_up``/``bytes_down`` (0: nothing crosses a wire).
    """
    cfg = _as_config(config)
    dataset = load_dataset(cfg.dataset, cfg.data_dir, cache_dir, download=cfg.download)
    spec, arrays = dataset.spec, dataset.arrays
    pool = train_indices(cfg, np.asarray(arrays.train_y))
    test = np.arange(len(arrays.test_y), dtype=np.int64)
    if cfg.max_test_samples is not None:
        test = cap_indices(test, cfg.max_test_samples, cfg.seed)
    train_loader = ShardLoader(dataset, pool, cfg.batch_size, cfg.seed, 0, train=True)
    test_loader = ShardLoader(dataset, test, cfg.eval_batch_size, cfg.seed, 0, train=False)
    model = build_model(cfg.model, tuple(spec.input_shape), spec.num_classes, cfg.seed)
    optimizer = make_optimizer(model.parameters(), cfg)

    curve: list[dict[str, Any]] = []
    elapsed = 0.0
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        model.train()
        loss_sum, steps, correct, seen = 0.0, 0, 0, 0
        for x, y in train_loader.batches(epoch):
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            steps += 1
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += int(y.shape[0])
        accuracy, test_loss, test_count = _evaluate(model, test_loader)
        seconds = time.perf_counter() - started
        elapsed += seconds
        point = {
            "round": epoch + 1,
            "test_accuracy": accuracy,
            "test_loss": test_loss,
            "train_loss": loss_sum / steps if steps else 0.0,
            "train_accuracy": correct / seen if seen else 0.0,
            "round_seconds": seconds,
            "seconds": elapsed,
            "bytes": 0,
        }
        curve.append(point)
        if on_epoch is not None:
            on_epoch(point)
    accuracies = [p["test_accuracy"] for p in curve]
    return {
        "paradigm": CENTRALIZED,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "rounds": len(curve),
        "train_samples": int(train_loader.num_samples),
        "test_samples": int(test_loader.num_samples),
        "test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies) if accuracies else None,
        "train_seconds": elapsed,
        "bytes_up": 0,
        "bytes_down": 0,
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slperf.bench.centralized",
        description="Train the centralized (unsplit, one-process) baseline of a run config.",
    )
    parser.add_argument("config", type=Path, help="run config (YAML)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    config, _ = load_config(args.config)
    torch.set_num_threads(config.torch_threads or 1)  # one thread, like every process of a local federation
    started = time.perf_counter()

    def on_epoch(point: dict[str, Any]) -> None:
        print(json.dumps({"event": "epoch", **point}), flush=True)

    result = train_centralized(config, on_epoch=on_epoch)
    result["process_seconds"] = time.perf_counter() - started
    result["peak_rss_bytes"] = self_peak_rss_bytes()
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        atomic_write(args.out, text + "\n")
    print(json.dumps({"event": "done", "test_accuracy": result["test_accuracy"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
