"""Which samples a client holds: the same function on every machine, so a shard is a pure function of
(config, client index) and nobody ever ships data or index lists over the wire."""

from __future__ import annotations

import os

import numpy as np

from slperf.common.config import RunConfig
from slperf.common.data import ClientPartition, LoadedDataset, ShardLoader, cap_indices, load_dataset, partition_dataset
from slperf.common.data.client_data import ClientData
from slperf.common.data.shared import current_shared


def train_indices(config: RunConfig, labels: np.ndarray) -> np.ndarray:
    """The training pool the partition splits: everything, or a seeded subset for quick runs."""
    pool = np.arange(len(labels), dtype=np.int64)
    if config.max_train_samples is not None:
        pool = cap_indices(pool, config.max_train_samples, config.seed)
    return pool


def client_partitions(config: RunConfig, dataset: LoadedDataset) -> list[ClientPartition]:
    """Every client's rows (and, for a vertical partition, feature columns); raises ValueError for a
    partition the data set cannot do (e.g. base_on_attribute on images). Inside ``shared_data()`` (a simulation)
    it is computed once per config and data set, not once per client."""
    shared = current_shared()
    if shared is not None:
        return shared.memo(("partitions", config.to_json(), id(dataset)), lambda: _client_partitions(config, dataset))
    return _client_partitions(config, dataset)


def _client_partitions(config: RunConfig, dataset: LoadedDataset) -> list[ClientPartition]:
    pool = train_indices(config, np.asarray(dataset.arrays.train_y))
    return partition_dataset(
        dataset,
        config.partition_method,
        config.clients,
        config.seed,
        pool=pool,
        alpha=config.partition_alpha,
        class_number_per_client=config.class_number_per_client,
        equal_size=config.equal_size,
        partition_method_attributes=config.partition_method_attributes,
        data_vertical_list=config.data_vertical_list,
    )


def build_client_data(config: RunConfig, index: int, cache_dir: str | os.PathLike[str] | None = None) -> ClientData:
    dataset = load_dataset(config.dataset, config.data_dir, cache_dir, download=config.download)
    spec, arrays = dataset.spec, dataset.arrays
    part = client_partitions(config, dataset)[index]
    # Vertical: row order is the alignment key, so every client visits its rows in the same order.
    order_index = 0 if config.partition_method == "vertical" else index
    test = np.arange(len(arrays.test_y), dtype=np.int64)
    if config.max_test_samples is not None:
        test = cap_indices(test, config.max_test_samples, config.seed)
    train_loader = ShardLoader(
        dataset, part.indices, config.batch_size, config.seed, order_index, train=True, columns=part.columns
    )
    return ClientData(
        train=train_loader,
        test=ShardLoader(
            dataset, test, config.eval_batch_size, config.seed, order_index, train=False, columns=part.columns
        ),
        num_classes=spec.num_classes,
        input_shape=train_loader.input_shape,  # = spec.input_shape except for a vertical client's columns
    )
