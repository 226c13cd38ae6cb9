"""The centralized baseline: the unsplit model on all the (capped) data, with the same budget and batches as
a one-client federation."""

from __future__ import annotations

from slperf.bench.suite import CENTRALIZED


def test_centralized_baseline_on_a_tiny_capped_config():
    from slperf.bench.centralized import train_centralized

    config = {
        "dataset": "mnist",
        "model": "lenet",
        "epochs": 3,
        "batch_size": 16,
        "lr": 0.05,
        "max_train_samples": 256,
        "max_test_samples": 200,
        "seed": 0,
    }
    seen = []
    result = train_centralized(config, on_epoch=seen.append)
    assert result["paradigm"] == CENTRALIZED and result["rounds"] == 3 and len(result["curve"]) == 3
    assert result["train_samples"] == 256 and result["test_samples"] == 200
    assert seen == result["curve"]
    assert [p["round"] for p in result["curve"]] == [1, 2, 3]
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["best_test_accuracy"] == max(p["test_accuracy"] for p in result["curve"])
    # 48 steps on 256 MNIST samples: the loss falls and the accuracy leaves chance (0.1) behind
    assert result["curve"][-1]["train_loss"] < result["curve"][0]["train_loss"]
    assert result["test_accuracy"] > 0.2
    assert result["bytes_up"] == result["bytes_down"] == 0
    again = train_centralized(config)
    assert [p["test_accuracy"] for p in again["curve"]] == [p["test_accuracy"] for p in result["curve"]]


def test_centralized_equals_a_one_client_shard_reference():
    """Same budget, same batches: a 1-client homo shard reference with the same seed sees the same data."""
    import numpy as np

    from slperf.common.config_loader import config_from_mapping
    from slperf.common.data import load_dataset
    from slperf.common.shards import build_client_data, train_indices

    config, _ = config_from_mapping({"dataset": "mnist", "clients": 1, "max_train_samples": 300, "seed": 4})
    shard = build_client_data(config, 0).train
    pool = train_indices(config, np.asarray(load_dataset("mnist").arrays.train_y))
    assert np.array_equal(shard.indices, pool)
