"""Splitting a training set among clients: SLPerf's partition methods, with their sample-loss and duplication
bugs fixed (SLPerf dropped or duplicated samples in some methods; here every sample goes to one client).

`partition(labels, method, num_clients, seed, ...)` returns one sorted int64 index array per client. Every
method draws from `np.random.default_rng(seed)` only, so the result depends on nothing but the arguments: the
same on every machine and process, whatever the global NumPy/torch random state.

Methods and how they differ from SLPerf's:

* ``homo``: a random permutation cut into num_clients near-equal shards (sizes differ by at most one). Same as
  SLPerf.
* ``hetero``: Dirichlet label skew. For each class: shuffle its indices, draw p ~ Dir(alpha·1_N), zero p for
  clients already holding >= total/N samples, renormalise, cut at the cumulative proportions. Repeated until
  every client has >= min_samples. Unlike SLPerf, each retry starts from *empty* client lists (SLPerf keeps
  appending, which duplicates samples), and shards are *not* cut down to the smallest one unless
  equal_size=True (SLPerf always truncates, discarding data). If every open client's proportion comes out as
  exactly 0 (possible with tiny alpha), the class is spread uniformly over the open clients (SLPerf would
  divide by zero).
* ``label_skew``: class_number_per_client (= c) classes per client, assigned like SLPerf's
  ``base_on_class_intersection``: client i holds the c consecutive class ids (mod K) starting at an offset
  that advances by K//N per client, plus one for the first K % N clients (K=10, N=5, c=4 → {0-3}, {2-5},
  {4-7}, {6-9}, {8,9,0,1}). **Deviation:** SLPerf gives every holder of a class *all* its samples, so clients
  hold identical samples; here the clients sharing a class split its (shuffled) samples into near-equal
  parts, so shards are disjoint. Also unlike SLPerf, c·N < K does not fall back to base_on_class: each client
  still gets exactly c classes and the samples of classes nobody holds are left out.
* ``base_on_class``: disjoint contiguous class blocks (K//N classes each, one more for the first K % N
  clients), each client getting all samples of its classes. N > K is an error (SLPerf silently produced a
  broken split). No truncation unless equal_size=True.
* ``base_on_attribute`` (SLPerf: Adult only; here any tabular data set): split by the values of one original
  attribute, ``partition_method_attributes`` = its column index in the original file (Adult: 9 = sex,
  7 = relationship). Callers pass the per-row value codes as ``attribute`` (see `attribute_codes` in
  attributes.py, or `partition_dataset`, which does it). With N clients and V distinct values: if N <= V, the
  sorted values are dealt out as contiguous blocks (V//N each, one more for the first V % N clients) and each
  client gets every row of its values; if N > V, the clients are dealt out over the values the same way and
  the clients sharing a value split its (shuffled) rows into near-equal parts. Shards are disjoint; unlike
  SLPerf they are not cut to the smallest one unless equal_size=True.
* ``vertical``: every client gets every row (the shards are identical, not disjoint); what differs is the
  feature columns, `vertical_columns` in attributes.py (``data_vertical_list``, e.g. [6, 4, 4]: attribute counts
  per client). Row order is the alignment key: the clients of a vertical run must visit their rows in the
  same order (ShardLoader with the same seed and client_index, or shuffle=False).

equal_size=True (any method but vertical) cuts every shard to the size of the smallest by a random subset, as
SLPerf did for the lock-step paradigms that need equal batch counts.

Each method is a `Partitioner` in the `PARTITIONERS` table (`register_partitioner` adds one); `partition`
checks the common arguments and looks the method up, and `partition_dataset` asks the method's
`from_dataset` for whatever it needs beyond the labels (attribute codes, a vertical client's columns). The
label histograms of a partition are in histograms.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .attributes import attribute_codes, vertical_columns
from .spec import LoadedDataset

HETERO_MAX_TRIES = 1000

_RENAMED = {"base_on_class_intersection": "label_skew", "iid": "homo", "dirichlet": "hetero"}


def _check_labels(labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and int(y.min()) < 0:
        raise ValueError("labels must be non-negative class ids")
    top = int(y.max()) + 1 if y.size else 0
    if num_classes is None:
        num_classes = top
    elif num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    elif top > num_classes:
        raise ValueError(f"labels reach class {top - 1} but num_classes is {num_classes}")
    return y, int(num_classes)


def _homo(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n), num_clients))


def _hetero(
    by_class: list[np.ndarray], n: int, num_clients: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if num_clients * min_samples > n:
        raise ValueError(
            f"hetero partition impossible: {num_clients} clients x min_samples {min_samples} > {n} samples"
        )
    cap = n / num_clients
    smallest = 0
    for _ in range(HETERO_MAX_TRIES):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            if idx.size == 0:
                continue
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            open_ = sizes < cap
            p = np.where(open_, p, 0.0)
            total = p.sum()
            p = p / total if total > 0 else open_ / open_.sum()
            cuts = (np.cumsum(p) * idx.size).astype(np.int64)[:-1]
            for j, piece in enumerate(np.split(idx, cuts)):
                shards[j].append(piece)
                sizes[j] += piece.size
        smallest = int(sizes.min())
        if smallest >= min_samples:
            return [np.concatenate(s) if s else np.empty(0, np.int64) for s in shards]
    raise ValueError(
        f"hetero partition: after {HETERO_MAX_TRIES} Dirichlet draws some of the {num_clients} clients still had "
        f"fewer than min_samples={min_samples} samples (last smallest: {smallest}); raise alpha (now {alpha}), "
        "lower min_samples or use fewer clients"
    )


def label_skew_classes(num_classes: int, num_clients: int, class_number_per_client: int) -> list[list[int]]:
    """The class ids each client holds under ``label_skew`` (SLPerf's base_on_class_intersection rule)."""
    k, c = num_classes, class_number_per_client
    out, offset = [], 0
    for i in range(num_clients):
        out.append([(offset + j) % k for j in range(c)])
        offset += k // num_clients + (1 if i < k % num_clients else 0)
    return out


def base_on_class_classes(num_classes: int, num_clients: int) -> list[list[int]]:
    """The class ids each client holds under ``base_on_class`` (contiguous disjoint blocks)."""
    blocks = np.array_split(np.arange(num_classes), num_clients)
    return [b.tolist() for b in blocks]


def _by_assignment(
    by_class: list[np.ndarray], assignment: list[list[int]], rng: np.random.Generator
) -> list[np.ndarray]:
    holders: dict[int, list[int]] = {}
    for client, classes in enumerate(assignment):
        for k in classes:
            holders.setdefault(k, []).append(client)
    shards: list[list[np.ndarray]] = [[] for _ in assignment]
    for k in sorted(holders):
        idx = rng.permutation(by_class[k])
        for client, piece in zip(holders[k], np.array_split(idx, len(holders[k]))):
            shards[client].append(piece)
    return [np.concatenate(s) if s else np.empty(0, np.int64) for s in shards]


def attribute_value_blocks(values: Sequence[int], num_clients: int) -> list[list[int]]:
    """``base_on_attribute`` with num_clients <= len(values): the attribute values each client holds."""
    return [b.tolist() for b in np.array_split(np.asarray(values), num_clients)]


def _base_on_attribute(attribute: np.ndarray, n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    a = np.asarray(attribute)
    if a.shape != (n,) or (a.size and a.dtype.kind not in "iu"):
        raise ValueError(
            f"attribute must be a 1-D integer array with one value code per sample ({n}), got shape {a.shape}"
        )
    a = a.astype(np.int64, copy=False)
    values = np.unique(a[a >= 0])
    if values.size == 0:
        raise ValueError("base_on_attribute: the attribute has no values")
    rows = {int(v): np.flatnonzero(a == v) for v in values}
    shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    if num_clients <= values.size:
        for client, block in enumerate(attribute_value_blocks(values, num_clients)):
            shards[client] = [rows[v] for v in block]
    else:
        groups = np.array_split(np.arange(num_clients), values.size)
        for v, group in zip(values.tolist(), groups):
            for client, piece in zip(group.tolist(), np.array_split(rng.permutation(rows[v]), group.size)):
                shards[client].append(piece)
    return [np.concatenate(s) if s else np.empty(0, np.int64) for s in shards]


@dataclass(frozen=True)
class PartitionRequest:
    """What a partitioner gets: the checked common arguments, the sample indices of every class, the seeded
    generator (the only source of randomness) and every method's own parameters (each method reads its own)."""

    n: int
    num_clients: int
    num_classes: int
    by_class: list[np.ndarray]
    rng: np.random.Generator
    alpha: float
    min_samples: int
    class_number_per_client: int
    attribute: np.ndarray | None
    data_vertical_list: Sequence[int] | None


@dataclass(frozen=True)
class DatasetArgs:
    """What `partition_dataset` knows beyond the labels, for the methods that need more (attributes, columns)."""

    dataset: LoadedDataset
    pool: np.ndarray
    num_clients: int
    partition_method_attributes: int
    data_vertical_list: Sequence[int] | None


@dataclass(frozen=True)
class DatasetInputs:
    """A method's inputs taken from the data set: keyword arguments for `partition` and, for a vertical
    partition, each client's feature columns."""

    extra: dict[str, Any] = field(default_factory=dict)
    columns: list[np.ndarray] | None = None


@dataclass(frozen=True)
class Partitioner:
    """One partition method: split(request) returns one index array per client.

    shared_rows: every client gets every row (vertical), so the shards are returned as split made them, without
    the empty-shard check and the equal_size cut that disjoint shards get. from_dataset: for a method that
    needs more than labels, what `partition_dataset` derives from the data set before splitting.
    """

    split: Callable[[PartitionRequest], list[np.ndarray]]
    shared_rows: bool = False
    from_dataset: Callable[[DatasetArgs], DatasetInputs] | None = None


PARTITIONERS: dict[str, Partitioner] = {}


def register_partitioner(name: str, partitioner: Partitioner) -> Partitioner:
    if name in PARTITIONERS:
        raise ValueError(f"partition method {name!r} is already registered")
    PARTITIONERS[name] = partitioner
    return partitioner


def _split_homo(req: PartitionRequest) -> list[np.ndarray]:
    return _homo(req.n, req.num_clients, req.rng)


def _split_hetero(req: PartitionRequest) -> list[np.ndarray]:
    if not req.alpha > 0 or not np.isfinite(req.alpha):
        raise ValueError(f"alpha must be a positive finite number, got {req.alpha!r}")
    if req.min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {req.min_samples}")
    return _hetero(req.by_class, req.n, req.num_clients, float(req.alpha), int(req.min_samples), req.rng)


def _split_label_skew(req: PartitionRequest) -> list[np.ndarray]:
    k, c = req.num_classes, req.class_number_per_client
    if not 1 <= c <= k:
        raise ValueError(f"class_number_per_client must be in 1..{k} (the number of classes), got {c}")
    return _by_assignment(req.by_class, label_skew_classes(k, req.num_clients, c), req.rng)


def _split_base_on_class(req: PartitionRequest) -> list[np.ndarray]:
    if req.num_clients > req.num_classes:
        raise ValueError(
            f"base_on_class needs at most one client per class: {req.num_clients} clients > {req.num_classes} "
            "classes (use label_skew or hetero for more clients)"
        )
    return _by_assignment(req.by_class, base_on_class_classes(req.num_classes, req.num_clients), req.rng)


def _split_base_on_attribute(req: PartitionRequest) -> list[np.ndarray]:
    if req.attribute is None:
        raise ValueError(
            "base_on_attribute needs the attribute's value per sample (attribute=...; for a data set use "
            "partition_dataset with partition_method_attributes)"
        )
    return _base_on_attribute(req.attribute, req.n, req.num_clients, req.rng)


def _split_vertical(req: PartitionRequest) -> list[np.ndarray]:
    counts = req.data_vertical_list
    if counts is not None and len(list(counts)) != req.num_clients:
        raise ValueError(
            f"data_vertical_list {list(counts)} has {len(list(counts))} entries for "
            f"{req.num_clients} clients; it needs one attribute count per client"
        )
    everyone = np.arange(req.n, dtype=np.int64)
    return [everyone.copy() for _ in range(req.num_clients)]


def _attribute_inputs(args: DatasetArgs) -> DatasetInputs:
    x = np.asarray(args.dataset.arrays.train_x)[args.pool]
    return DatasetInputs({"attribute": attribute_codes(args.dataset.spec, x, args.partition_method_attributes)})


def _vertical_inputs(args: DatasetArgs) -> DatasetInputs:
    spec, counts, n = args.dataset.spec, args.data_vertical_list, args.num_clients
    if counts is None and spec.features and isinstance(n, int) and n > 0:
        counts = [len(b) for b in np.array_split(np.arange(len(spec.features)), n)]
    columns = vertical_columns(spec, counts if counts is not None else [])
    return DatasetInputs({"data_vertical_list": counts}, columns)


register_partitioner("homo", Partitioner(_split_homo))
register_partitioner("hetero", Partitioner(_split_hetero))
register_partitioner("label_skew", Partitioner(_split_label_skew))
register_partitioner("base_on_class", Partitioner(_split_base_on_class))
register_partitioner("base_on_attribute", Partitioner(_split_base_on_attribute, from_dataset=_attribute_inputs))
register_partitioner("vertical", Partitioner(_split_vertical, shared_rows=True, from_dataset=_vertical_inputs))

# The built-in methods, in their documented order (PARTITIONERS also holds any registered later).
PARTITION_METHODS = tuple(PARTITIONERS)


def partition(
    labels: np.ndarray,
    method: str,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    min_samples: int = 10,
    class_number_per_client: int = 2,
    equal_size: bool = False,
    num_classes: int | None = None,
    attribute: np.ndarray | None = None,
    data_vertical_list: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Splits the sample indices 0..len(labels)-1 among num_clients clients; returns sorted int64 arrays.

    method: a key of PARTITIONERS (see the module docstring). alpha, min_samples: ``hetero`` only.
    class_number_per_client: ``label_skew`` only. attribute: ``base_on_attribute`` only, one integer value code
    per sample (codes < 0 = no value: such rows go to nobody). data_vertical_list: ``vertical`` only, optional
    here (checked to have one entry per client; the columns come from `vertical_columns`). equal_size: cut
    every shard to the smallest one's size. num_classes: default max(labels)+1. The shards are disjoint for
    every method but ``vertical`` (where each client gets every row); raises ValueError for bad arguments, an
    impossible request, or a split that would leave a client without samples.
    """
    partitioner = PARTITIONERS.get(method) if isinstance(method, str) else None
    if partitioner is None:
        hint = f" (use {_RENAMED[method]!r})" if method in _RENAMED else ""
        raise ValueError(f"unknown partition method {method!r}{hint}; valid methods: {', '.join(PARTITIONERS)}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    num_clients, seed = int(num_clients), int(seed)
    y, k = _check_labels(labels, num_classes)
    n = y.size
    if n < num_clients:
        raise ValueError(f"cannot split {n} samples among {num_clients} clients")
    rng = np.random.default_rng(seed)
    request = PartitionRequest(
        n=n,
        num_clients=num_clients,
        num_classes=k,
        by_class=[np.flatnonzero(y == c) for c in range(k)],
        rng=rng,
        alpha=alpha,
        min_samples=min_samples,
        class_number_per_client=class_number_per_client,
        attribute=attribute,
        data_vertical_list=data_vertical_list,
    )
    shards = partitioner.split(request)
    if partitioner.shared_rows:
        return shards

    empty = [i for i, s in enumerate(shards) if s.size == 0]
    if empty:
        raise ValueError(f"{method} partition leaves client(s) {empty} without samples; use fewer clients")
    if equal_size:
        m = min(s.size for s in shards)
        shards = [s if s.size == m else rng.choice(s, m, replace=False) for s in shards]
    return [np.sort(s).astype(np.int64, copy=False) for s in shards]


def class_counts(labels: np.ndarray, shards: list[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """N×K matrix of how many samples of each class every client holds (for logs and checks)."""
    y, k = _check_labels(labels, num_classes)
    return np.stack([np.bincount(y[s], minlength=k) for s in shards]) if shards else np.zeros((0, k), np.int64)


# ---- partitions of a loaded data set -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientPartition:
    """What one client holds: training rows (indices into the train split) and, for a vertical partition,
    its feature columns (None = all columns)."""

    indices: np.ndarray
    columns: np.ndarray | None = None


def partition_dataset(
    dataset: LoadedDataset,
    method: str,
    num_clients: int,
    seed: int,
    *,
    pool: np.ndarray | None = None,
    alpha: float = 0.5,
    min_samples: int = 10,
    class_number_per_client: int = 2,
    equal_size: bool = False,
    partition_method_attributes: int = 9,
    data_vertical_list: Sequence[int] | None = None,
) -> list[ClientPartition]:
    """`partition` for a loaded data set, including the methods that need more than labels.

    pool: the training rows to split (default all); the returned indices refer to the full train split.
    partition_method_attributes: ``base_on_attribute``'s original attribute column (Adult: 9 = sex).
    data_vertical_list: ``vertical``'s attribute counts per client (default: the attributes dealt out as evenly
    as possible, earlier clients getting one more).
    """
    labels = np.asarray(dataset.arrays.train_y)
    pool = np.arange(len(labels), dtype=np.int64) if pool is None else np.asarray(pool, dtype=np.int64)
    partitioner = PARTITIONERS.get(method) if isinstance(method, str) else None
    inputs = DatasetInputs()
    if partitioner is not None and partitioner.from_dataset is not None:
        inputs = partitioner.from_dataset(
            DatasetArgs(dataset, pool, num_clients, partition_method_attributes, data_vertical_list)
        )
    shards = partition(
        labels[pool],
        method,
        num_clients,
        seed,
        alpha=alpha,
        min_samples=min_samples,
        class_number_per_client=class_number_per_client,
        equal_size=equal_size,
        num_classes=dataset.spec.num_classes,
        **inputs.extra,
    )
    if inputs.columns is None:
        return [ClientPartition(pool[s]) for s in shards]
    return [ClientPartition(pool[s], c) for s, c in zip(shards, inputs.columns)]
