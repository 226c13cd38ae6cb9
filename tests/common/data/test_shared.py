"""Data shared by the parties of one process (the simulation backend): one load of the data set, the partition
computed once, loaders that keep index arrays into the shared arrays, and batches identical to a copying loader's."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from slperf.common.config import RunConfig
from slperf.common.data import load_dataset
from slperf.common.data.shared import current_shared, shared_data
from slperf.common.paradigms.vertical import vertical_client_data
from slperf.common.shards import build_client_data, client_partitions

CONFIG = RunConfig(clients=3, batch_size=16, max_train_samples=120, max_test_samples=50, eval_batch_size=20, seed=2)


def _batches(loader, epoch=0):
    return [(x.clone(), y.clone()) for x, y in loader.batches(epoch)]


def test_clients_built_in_shared_data_hold_indices_into_one_copy_and_see_the_same_batches():
    alone = [build_client_data(CONFIG, i) for i in range(3)]
    with shared_data():
        shared = [build_client_data(CONFIG, i) for i in range(3)]
        dataset = load_dataset(CONFIG.dataset)
        assert load_dataset(CONFIG.dataset) is dataset  # one load per process
        assert client_partitions(CONFIG, dataset) is client_partitions(CONFIG, dataset)
    for mine, theirs in zip(shared, alone, strict=True):
        assert mine.train.num_samples == theirs.train.num_samples
        assert mine.input_shape == theirs.input_shape
        for (x, y), (x2, y2) in zip(_batches(mine.train, 1), _batches(theirs.train, 1), strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)
        for (x, y), (x2, y2) in zip(mine.test.batches(0, shuffle=False), theirs.test.batches(0, shuffle=False)):
            assert torch.equal(x, x2) and torch.equal(y, y2)
        assert np.shares_memory(mine.train._x, dataset.arrays.train_x)  # the shared array, not a copy of rows
    assert shared[0].test.indices is shared[2].test.indices  # the evaluation set's indices are kept once
    assert not shared[0].test.indices.flags.writeable
    assert current_shared() is None  # the context ends with the block


def test_a_vertical_clients_columns_come_out_the_same_from_the_shared_arrays():
    config = RunConfig(paradigm="vertical", dataset="german", clients=2, batch_size=32, max_train_samples=100, seed=1)
    config.options = {"cut_layer_vertical_list": None, "label_owner": 0}
    alone = vertical_client_data(config, 1)
    with shared_data():
        shared = vertical_client_data(config, 1)
    assert shared.input_shape == alone.input_shape
    for (x, y), (x2, y2) in zip(_batches(shared.train), _batches(alone.train), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_the_shared_context_follows_tasks_and_their_threads():
    async def main() -> object:
        return await asyncio.to_thread(current_shared)

    with shared_data() as shared:
        assert asyncio.run(main()) is shared
