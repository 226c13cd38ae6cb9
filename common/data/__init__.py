"""Data sets, partitions and per-client batches for the benchmark.

    ds = load_dataset("mnist")                      # decoded once into the cache, memory-mapped afterwards
    shards = partition(ds.arrays.train_y, "hetero", num_clients=3, seed=0, alpha=0.5)
    loader = ShardLoader(ds, shards[0], batch_size=64, seed=0, client_index=0)
    for x, y in loader.batches(epoch=0): ...

Data sets: mnist, fashionmnist, adult, german, german-numeric, cifar10, cifar10-synthetic (see `DATASETS`,
each spec's `summary`). Partitions that need more than labels (base_on_attribute, vertical) go through
`partition_dataset`, which also returns a vertical client's feature columns.

Layout: the core is spec.py (types), registry.py (DATASETS, load_dataset), builtin.py (the built-in data sets,
registered here, once), cache.py, partition.py (the PARTITIONERS table), attributes.py, histograms.py and
loader.py (ShardLoader); where the data come from (artifacts, downloads, the per-format readers) is in sources/.
"""

from typing import TYPE_CHECKING

from . import builtin  # noqa: F401  (registers the built-in data sets in DATASETS)
from .attributes import attribute_codes, vertical_columns
from .errors import DatasetCorrupt, DatasetUnavailable
from .histograms import LabelHistograms, label_histograms, plot_label_histograms
from .partition import (
    PARTITION_METHODS,
    PARTITIONERS,
    ClientPartition,
    Partitioner,
    class_counts,
    partition,
    partition_dataset,
    register_partitioner,
)
from .registry import DATASETS, get_spec, load_dataset, register_dataset
from .spec import Arrays, DatasetSpec, Feature, LoadedDataset

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
    "PARTITIONERS",
    "PARTITION_METHODS",
    "Arrays",
    "ClientPartition",
    "DatasetCorrupt",
    "DatasetSpec",
    "DatasetUnavailable",
    "Feature",
    "LabelHistograms",
    "LoadedDataset",
    "Partitioner",
    "ShardLoader",
    "attribute_codes",
    "cap_indices",
    "class_counts",
    "get_spec",
    "label_histograms",
    "load_dataset",
    "partition",
    "partition_dataset",
    "plot_label_histograms",
    "register_dataset",
    "register_partitioner",
    "vertical_columns",
]
