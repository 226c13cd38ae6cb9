"""Which samples a client holds: the same function on every machine, so a shard is a pure function of
(config, client index) and nobody ever ships data or index lists over the wire."""
from __future__ import annotations

import numpy as np

from slperf.common.config import RunConfig
from slperf.common.data import ShardLoader, cap_indices, load_dataset, partition
from slperf.common.paradigms.base import ClientData


def train_indices(config: RunConfig, labels: np.ndarray) -> np.ndarray:
    """The training pool the partition splits: everything, or a seeded subset for quick runs."""
    pool = np.arange(len(labels), dtype=np.int64)
    if config.max_train_samples is not None:
        pool = cap_indices(pool, config.max_train_samples, config.seed)
    return pool


def client_indices(config: RunConfig, labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    pool = train_indices(config, labels)
    shards = partition(labels[pool], config.partition_method, config.clients, config.seed,
                       alpha=config.partition_alpha, class_number_per_client=config.class_number_per_client,
                       equal_size=config.equal_size, num_classes=num_classes)
    return [pool[s] for s in shards]


def build_client_data(config: RunConfig, index: int, cache_dir=None) -> ClientData:
    dataset = load_dataset(config.dataset, config.data_dir, cache_dir)
    spec, arrays = dataset.spec, dataset.arrays
    shard = client_indices(config, np.asarray(arrays.train_y), spec.num_classes)[index]
    test = np.arange(len(arrays.test_y), dtype=np.int64)
    if config.max_test_samples is not None:
        test = cap_indices(test, config.max_test_samples, config.seed)
    return ClientData(
        train=ShardLoader(dataset, shard, config.batch_size, config.seed, index, train=True),
        test=ShardLoader(dataset, test, config.eval_batch_size, config.seed, index, train=False),
        num_classes=spec.num_classes,
        input_shape=tuple(spec.input_shape),
    )
