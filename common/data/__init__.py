"""Data sets, partitions and per-client batches for the benchmark.

    ds = load_dataset("mnist")                      # decoded once into the cache, memory-mapped afterwards
    shards = partition(ds.arrays.train_y, "hetero", num_clients=3, seed=0, alpha=0.5)
    loader = ShardLoader(ds, shards[0], batch_size=64, seed=0, client_index=0)
    for x, y in loader.batches(epoch=0): ...
"""
from typing import TYPE_CHECKING

from .errors import DatasetCorrupt, DatasetUnavailable
from .partition import PARTITION_METHODS, class_counts, partition
from .registry import DATASETS, Arrays, DatasetSpec, LoadedDataset, load_dataset, register_dataset

if TYPE_CHECKING:
    from .loader import ShardLoader, cap_indices


def __getattr__(name: str):
    # ShardLoader needs torch (about 1.5 s to import); processes that only partition or prepare data skip it.
    if name in ("ShardLoader", "cap_indices"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DATASETS",
    "PARTITION_METHODS",
    "Arrays",
    "DatasetCorrupt",
    "DatasetSpec",
    "DatasetUnavailable",
    "LoadedDataset",
    "ShardLoader",
    "cap_indices",
    "class_counts",
    "load_dataset",
    "partition",
    "register_dataset",
]
