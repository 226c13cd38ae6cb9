"""Splitting a training set among clients: SLPerf's partition methods, with their sample-loss and duplication
bugs fixed (shared/research/slperf.md §4.3).

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

equal_size=True (any method) cuts every shard to the size of the smallest by a random subset, as SLPerf did
for the lock-step paradigms that need equal batch counts.
"""
from __future__ import annotations

import numpy as np

PARTITION_METHODS = ("homo", "hetero", "label_skew", "base_on_class")
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
) -> list[np.ndarray]:
    """Splits the sample indices 0..len(labels)-1 among num_clients clients; returns sorted int64 arrays.

    method: one of PARTITION_METHODS (see the module docstring). alpha, min_samples: ``hetero`` only.
    class_number_per_client: ``label_skew`` only. equal_size: cut every shard to the smallest one's size.
    num_classes: default max(labels)+1. The shards are always disjoint; raises ValueError for bad arguments,
    an impossible request, or a split that would leave a client without samples.
    """
    if method not in PARTITION_METHODS:
        hint = f" (use {_RENAMED[method]!r})" if method in _RENAMED else ""
        raise ValueError(f"unknown partition method {method!r}{hint}; valid methods: {', '.join(PARTITION_METHODS)}")
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
    by_class = [np.flatnonzero(y == c) for c in range(k)]

    if method == "homo":
        shards = _homo(n, num_clients, rng)
    elif method == "hetero":
        if not alpha > 0 or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if min_samples < 0:
            raise ValueError(f"min_samples must be >= 0, got {min_samples}")
        shards = _hetero(by_class, n, num_clients, float(alpha), int(min_samples), rng)
    elif method == "label_skew":
        if not 1 <= class_number_per_client <= k:
            raise ValueError(f"class_number_per_client must be in 1..{k} (the number of classes), got {class_number_per_client}")
        shards = _by_assignment(by_class, label_skew_classes(k, num_clients, class_number_per_client), rng)
    else:  # base_on_class
        if num_clients > k:
            raise ValueError(
                f"base_on_class needs at most one client per class: {num_clients} clients > {k} classes "
                "(use label_skew or hetero for more clients)"
            )
        shards = _by_assignment(by_class, base_on_class_classes(k, num_clients), rng)

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
