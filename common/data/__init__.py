"""Data sets, partitions and per-client batches for the benchmark.

    ds = load_dataset("mnist")                      # decoded once into the cache, memory-mapped afterwards
    shards = partition(ds.arrays.train_y, "hetero", num_clients=3, seed=0, alpha=0.5)
    loader = ShardLoader(ds, shards[0], batch_size=64, seed=0, client_index=0)
    for x, y in loader.batches(epoch=0): ...

Data sets: mnist, fashionmnist, adult, german, german-numeric, cifar10, cifar10-synthetic (see `DATASETS`,
each spec's `summary`). Partitions that need more than labels (base_on_attribute, vertical) go through
`partition_dataset`, which also returns a vertical client's feature columns.
"""
from typing import TYPE_CHECKING

from .errors import DatasetCorrupt, DatasetUnavailable
from .partition import (
    PARTITION_METHODS,
    ClientPartition,
    LabelHistograms,
    class_counts,
    label_histograms,
    partition,
    partition_dataset,
    plot_label_histograms,
)
from .registry import DATASETS, Arrays, DatasetSpec, Feature, LoadedDataset, load_dataset, register_dataset
from .tabular import attribute_codes, vertical_columns

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
    "ClientPartition",
    "DatasetCorrupt",
    "DatasetSpec",
    "DatasetUnavailable",
    "Feature",
    "LabelHistograms",
    "LoadedDataset",
    "ShardLoader",
    "attribute_codes",
    "cap_indices",
    "class_counts",
    "label_histograms",
    "load_dataset",
    "partition",
    "partition_dataset",
    "plot_label_histograms",
    "register_dataset",
    "vertical_columns",
]
