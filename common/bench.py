"""The research benchmark: a matrix of paradigms x datasets x partitions x client counts x seeds from one YAML
suite file, each cell a real local federation (``slperf.federation.run_federation``: server and client
daemons as separate processes over mutual TLS on loopback), plus a centralized baseline per dataset and seed
(``slperf.common.centralized``). Results go to one folder:

    results.jsonl   one row per cell (appended as cells finish; the last row of a key wins), with its curve
    results.csv     the same rows without the curves
    report.md       comparison tables, one per dataset x partition x client count, centralized row in each
    plots/          accuracy vs round, vs bytes on the wire, vs training time: one line per paradigm
    configs/        the resolved config of every cell;  runs/  the federations' run folders and logs

Re-running the same suite into the same folder skips every cell that finished with the same resolved config
(its stable key, e.g. ``splitfed_v1/mnist/hetero-a0.5/c3/s0``, and a hash of its config); failed cells and
cells whose config changed are run again.

Suite file (every key but ``matrix`` optional)::

    name: quick
    description: one line for the report
    base: {model: lenet, epochs: 2, batch_size: 64, lr: 0.05, max_train_samples: 1500}   # RunConfig keys
    matrix:
      paradigms: all                    # every registered paradigm, or a list of names/aliases
      datasets: [mnist]
      partitions: [homo, hetero:0.5, {method: label_skew, classes: 2}]
      clients: [3]
      seeds: [0]
    exclude: [{paradigm: fedavg, partition: label_skew-k2}]   # skip cells matching every given field
    overrides:
      datasets: {adult: {model: mlp}}              # applied over base, for that dataset
      paradigms: {vertical: {partition_method: vertical}}   # applied last, for that paradigm
    target_accuracy: 0.9                # or per dataset {mnist: 0.97, cifar10: 0.6}
    centralized: true                   # a centralized baseline row per dataset and seed (default true)
    estimate: {seconds_per_sample: {mnist: 0.0004}, overhead_seconds: 8}   # priors for the time estimates

Partitions: ``homo`` (alias ``iid``), ``hetero:ALPHA`` (alias ``dirichlet:ALPHA``), ``label_skew:CLASSES``,
``base_on_class``, ``vertical``, or a mapping ``{method, alpha, classes}``. Precedence of config keys, lowest
first: ``base``, dataset overrides, the matrix axes, paradigm overrides.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from slperf.common.config import ConfigError, config_from_mapping

CENTRALIZED = "centralized"
REPO_ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO_ROOT / "benchmarks" / "suites"

# Training / test set sizes, for time estimates only (a suite with caps uses the caps).
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "mnist": (60000, 10000), "fashionmnist": (60000, 10000), "cifar10": (50000, 10000),
    "cifar10-synthetic": (50000, 10000), "adult": (32561, 16281), "german": (800, 200),
}
# Prior seconds per training sample of one federation pass (LeNet-sized models on this kind of machine,
# evaluation included as 0.3 of a training sample per test sample), and per-paradigm cost factors.
PRIOR_SECONDS_PER_SAMPLE: dict[str, float] = {
    "mnist": 3e-4, "fashionmnist": 3e-4, "cifar10": 2.5e-3, "cifar10-synthetic": 2.5e-3, "adult": 1e-4,
    "german": 1e-4,
}
DEFAULT_SECONDS_PER_SAMPLE = 5e-4
CENTRALIZED_TIME_FACTOR = 0.4  # one process, no cut: a paradigm's own factor is on its ParadigmSpec
EVAL_WEIGHT = 0.3


class SuiteError(ConfigError):
    """A suite file problem; the message names the key or cell."""


# ---- suite and matrix ---------------------------------------------------------------------------------------

_PARTITION_ALIASES = {"iid": "homo", "dirichlet": "hetero", "noniid": "hetero", "base_on_class_intersection": "label_skew"}


@dataclass(frozen=True)
class Partition:
    method: str
    alpha: float | None = None
    classes: int | None = None

    @property
    def label(self) -> str:
        if self.method == "hetero":
            return f"hetero-a{_num(self.alpha)}"
        if self.method == "label_skew":
            return f"label_skew-k{self.classes}"
        return self.method

    @property
    def title(self) -> str:
        if self.method == "hetero":
            return f"Dirichlet α={_num(self.alpha)}"
        if self.method == "label_skew":
            return f"label skew, {self.classes} classes per client"
        return {"homo": "IID"}.get(self.method, self.method)

    def config_keys(self) -> dict[str, Any]:
        keys: dict[str, Any] = {"partition_method": self.method}
        if self.alpha is not None:
            keys["partition_alpha"] = self.alpha
        if self.classes is not None:
            keys["class_number_per_client"] = self.classes
        return keys


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}"


def parse_partition(spec: Any) -> Partition:
    """``homo``, ``hetero:0.5``, ``label_skew:2``, or ``{method, alpha, classes}``."""
    if isinstance(spec, str):
        method, _, arg = spec.strip().partition(":")
        method = _PARTITION_ALIASES.get(method, method)
        raw: dict[str, Any] = {"method": method}
        if arg:
            try:
                raw["alpha" if method == "hetero" else "classes"] = float(arg) if method == "hetero" else int(arg)
            except ValueError:
                raise SuiteError(f"partition {spec!r}: {arg!r} is not a number") from None
    elif isinstance(spec, Mapping):
        raw = dict(spec)
        unknown = set(raw) - {"method", "alpha", "classes"}
        if unknown:
            raise SuiteError(f"partition {spec!r}: unknown keys {sorted(unknown)} (known: method, alpha, classes)")
        if "method" not in raw:
            raise SuiteError(f"partition {spec!r} needs a 'method'")
        raw["method"] = _PARTITION_ALIASES.get(str(raw["method"]), str(raw["method"]))
    else:
        raise SuiteError(f"a partition must be a string or a mapping, got {spec!r}")
    method = raw["method"]
    alpha, classes = raw.get("alpha"), raw.get("classes")
    if method == "hetero":
        if alpha is None:
            alpha = 0.5
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise SuiteError(f"partition {spec!r}: alpha must be a positive number")
        alpha = float(alpha)
    elif alpha is not None:
        raise SuiteError(f"partition {spec!r}: alpha applies to hetero only")
    if method == "label_skew":
        if classes is None:
            classes = 2
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise SuiteError(f"partition {spec!r}: classes must be a positive integer")
    elif classes is not None:
        raise SuiteError(f"partition {spec!r}: classes applies to label_skew only")
    return Partition(method, alpha, classes)


@dataclass(frozen=True)
class Cell:
    """One run of the matrix (or a centralized baseline: ``paradigm == "centralized"``)."""

    paradigm: str
    dataset: str
    partition: Partition | None
    clients: int | None
    seed: int
    config: Mapping[str, Any] = field(compare=False, hash=False)

    @property
    def key(self) -> str:
        if self.paradigm == CENTRALIZED:
            return f"{CENTRALIZED}/{self.dataset}/all/s{self.seed}"
        assert self.partition is not None
        return f"{self.paradigm}/{self.dataset}/{self.partition.label}/c{self.clients}/s{self.seed}"

    @property
    def slug(self) -> str:
        return self.key.replace("/", "__")

    @property
    def config_hash(self) -> str:
        text = json.dumps(dict(self.config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs", 3))


@dataclass
class Suite:
    name: str
    description: str
    base: dict[str, Any]
    paradigms: list[str]
    datasets: list[str]
    partitions: list[Partition]
    clients: list[int]
    seeds: list[int]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    dataset_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    paradigm_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    target_accuracy: float | dict[str, float] | None = None
    centralized: bool = True
    estimate: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def target_for(self, dataset: str) -> float | None:
        if isinstance(self.target_accuracy, Mapping):
            value = self.target_accuracy.get(dataset)
            return None if value is None else float(value)
        return None if self.target_accuracy is None else float(self.target_accuracy)


def resolve_suite_path(suite: str | Path) -> Path:
    """A suite file path, or a NAME found as benchmarks/suites/NAME.yaml (in the working directory, then
    next to this package)."""
    path = Path(suite)
    if path.suffix in (".yaml", ".yml") or path.exists() or os.sep in str(suite):
        if not path.exists():
            raise SuiteError(f"suite file not found: {path}")
        return path
    for folder in (Path.cwd() / "benchmarks" / "suites", SUITES_DIR):
        for ext in (".yaml", ".yml"):
            candidate = folder / f"{suite}{ext}"
            if candidate.exists():
                return candidate
    known = sorted({p.stem for folder in (Path.cwd() / "benchmarks" / "suites", SUITES_DIR) if folder.is_dir()
                    for p in folder.glob("*.y*ml")})
    raise SuiteError(f"no suite named {suite!r} (known: {', '.join(known) or 'none'}; or pass a YAML file)")


def _list(raw: Mapping[str, Any], key: str, default: Sequence[Any] | None = None) -> list[Any]:
    value = raw.get(key, default)
    if value is None:
        raise SuiteError(f"suite matrix needs '{key}'")
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise SuiteError(f"suite matrix key '{key}' is empty")
    return list(value)


def registered_paradigms() -> list[str]:
    from slperf.common.paradigms import registry

    return [spec.name for spec in registry.all_specs()]


def _canonical_paradigm(name: str) -> str:
    from slperf.common.paradigms import registry

    try:
        return registry.get(str(name)).name
    except ConfigError as exc:
        raise SuiteError(f"suite: {exc}") from None


def parse_suite(raw: Any, *, source: Path | None = None, name: str | None = None) -> Suite:
    """Validates a suite mapping; every problem is a SuiteError naming the key."""
    where = str(source) if source else "suite"
    if not isinstance(raw, Mapping):
        raise SuiteError(f"{where}: the top level must be a mapping")
    known = {"name", "description", "base", "matrix", "exclude", "overrides", "target_accuracy", "centralized",
             "estimate"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SuiteError(f"{where}: unknown suite keys {unknown} (known: {', '.join(sorted(known))})")
    matrix = raw.get("matrix")
    if not isinstance(matrix, Mapping):
        raise SuiteError(f"{where}: 'matrix' must be a mapping with paradigms, datasets, partitions, clients, seeds")
    m_unknown = sorted(set(matrix) - {"paradigms", "datasets", "partitions", "clients", "seeds"})
    if m_unknown:
        raise SuiteError(f"{where}: unknown matrix keys {m_unknown}")
    paradigms_raw = matrix.get("paradigms", "all")
    if paradigms_raw == "all":
        paradigms = registered_paradigms()
    else:
        paradigms = []
        for p in _list(matrix, "paradigms"):
            canonical = _canonical_paradigm(p)
            if canonical not in paradigms:
                paradigms.append(canonical)
    datasets = [str(d) for d in _list(matrix, "datasets", ["mnist"])]
    partitions = [parse_partition(p) for p in _list(matrix, "partitions", ["homo"])]
    clients = _list(matrix, "clients", [3])
    seeds = _list(matrix, "seeds", [0])
    for key, values in (("clients", clients), ("seeds", seeds)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "clients" else 0):
                raise SuiteError(f"{where}: matrix {key} must be {'positive' if key == 'clients' else 'non-negative'} "
                                 f"integers, got {v!r}")
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise SuiteError(f"{where}: 'base' must be a mapping of config keys")
    for axis in ("paradigm", "variants_type", "dataset", "clients", "client_number", "seed", "partition_method",
                 "partition_alpha", "class_number_per_client", "client_ids"):
        if axis in base:
            raise SuiteError(f"{where}: base key '{axis}' is set by the matrix; put it in 'matrix' instead")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping) or set(overrides) - {"datasets", "paradigms"}:
        raise SuiteError(f"{where}: 'overrides' must be a mapping with 'datasets' and/or 'paradigms'")
    ds_over = {str(k): dict(v or {}) for k, v in (overrides.get("datasets") or {}).items()}
    pd_over = {_canonical_paradigm(k): dict(v or {}) for k, v in (overrides.get("paradigms") or {}).items()}
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, Mapping) for e in exclude):
        raise SuiteError(f"{where}: 'exclude' must be a list of mappings")
    for rule in exclude:
        bad = set(rule) - {"paradigm", "dataset", "partition", "clients", "seed"}
        if bad:
            raise SuiteError(f"{where}: exclude rule {dict(rule)} has unknown fields {sorted(bad)}")
    target = raw.get("target_accuracy")
    if target is not None and not isinstance(target, (int, float, Mapping)):
        raise SuiteError(f"{where}: target_accuracy must be a number in 0..1 or a mapping dataset -> number")
    for value in (target.values() if isinstance(target, Mapping) else [target] if target is not None else []):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise SuiteError(f"{where}: target_accuracy values must be in (0, 1], got {value!r}")
    centralized = raw.get("centralized", True)
    if not isinstance(centralized, bool):
        raise SuiteError(f"{where}: centralized must be true or false")
    estimate = raw.get("estimate") or {}
    if not isinstance(estimate, Mapping):
        raise SuiteError(f"{where}: estimate must be a mapping")
    suite_name = str(raw.get("name") or name or (source.stem if source else "suite"))
    return Suite(name=suite_name, description=str(raw.get("description", "")), base=dict(base),
                 paradigms=paradigms, datasets=datasets, partitions=partitions, clients=[int(c) for c in clients],
                 seeds=[int(s) for s in seeds], exclude=[dict(e) for e in exclude], dataset_overrides=ds_over,
                 paradigm_overrides=pd_over, target_accuracy=dict(target) if isinstance(target, Mapping) else target,
                 centralized=centralized, estimate=dict(estimate), source=source)


def load_suite(suite: str | Path) -> Suite:
    path = resolve_suite_path(suite)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    return parse_suite(raw, source=path)


def _excluded(suite: Suite, cell: Cell) -> bool:
    fields = {"paradigm": cell.paradigm, "dataset": cell.dataset,
              "partition": cell.partition.label if cell.partition else None, "clients": cell.clients,
              "seed": cell.seed}
    for rule in suite.exclude:
        if all(_matches(fields[k], v) for k, v in rule.items()):
            return True
    return False


def _matches(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return any(_matches(actual, w) for w in wanted)
    if isinstance(actual, str) and isinstance(wanted, str):
        # "hetero" matches every hetero-aX label; "hetero-a0.5" only that one
        return actual == wanted or actual.split("-")[0] == wanted
    return actual == wanted


def _validate(config: dict[str, Any], key: str) -> dict[str, Any]:
    try:
        cfg, _ = config_from_mapping(config, source=f"cell {key}")
    except ConfigError as exc:
        raise SuiteError(str(exc)) from None
    resolved = cfg.to_dict()
    resolved.pop("client_ids", None)
    return resolved


def expand(suite: Suite) -> list[Cell]:
    """Every cell of the matrix, centralized baselines first (one per dataset and seed), then grouped by
    dataset, client count, partition and seed with the paradigms innermost. Each cell's config is validated
    (a typo fails here, not hours into the run)."""
    cells: list[Cell] = []
    if suite.centralized:
        for dataset in suite.datasets:
            for seed in suite.seeds:
                config = {**suite.base, **suite.dataset_overrides.get(dataset, {}), "dataset": dataset,
                          "seed": seed, "clients": 1, "partition_method": "homo"}
                cell = Cell(CENTRALIZED, dataset, None, None, seed, {})
                cells.append(Cell(CENTRALIZED, dataset, None, None, seed, _validate(config, cell.key)))
    for dataset in suite.datasets:
        for clients in suite.clients:
            for partition in suite.partitions:
                for seed in suite.seeds:
                    for paradigm in suite.paradigms:
                        config = {**suite.base, **suite.dataset_overrides.get(dataset, {}),
                                  "paradigm": paradigm, "dataset": dataset, "clients": clients, "seed": seed,
                                  **partition.config_keys(), **suite.paradigm_overrides.get(paradigm, {})}
                        probe = Cell(paradigm, dataset, partition, clients, seed, {})
                        if _excluded(suite, probe):
                            continue
                        cells.append(Cell(paradigm, dataset, partition, clients, seed, _validate(config, probe.key)))
    keys = [c.key for c in cells]
    if len(keys) != len(set(keys)):
        raise SuiteError("the matrix lists a cell twice (a repeated paradigm, dataset, partition, client count or seed)")
    return cells


def preflight(cells: Sequence[Cell]) -> list[str]:
    """Problems that will make cells fail, found before anything runs: data sets or models nobody has
    registered (the cells still run and fail with the loader's own message; this only says so up front)."""
    from slperf.common.data import DATASETS
    from slperf.common.models import MODELS

    notes: list[str] = []
    datasets = sorted({c.dataset for c in cells})
    missing = [d for d in datasets if d.lower() not in DATASETS]
    if missing:
        notes.append(f"data set(s) not registered: {', '.join(missing)} (known: {', '.join(sorted(DATASETS))}); "
                     "their cells will fail")
    models = sorted({str(c.config.get("model")) for c in cells})
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        notes.append(f"model(s) not registered yet: {', '.join(unknown)} (known now: {', '.join(sorted(MODELS))}); "
                     "their cells fail unless a module registers them when the run starts")
    return notes


# ---- time estimates -----------------------------------------------------------------------------------------

def work_units(config: Mapping[str, Any]) -> float:
    """Samples processed by one run: epochs x (training samples + EVAL_WEIGHT x test samples)."""
    train_n, test_n = DATASET_SIZES.get(str(config.get("dataset")), (60000, 10000))
    if config.get("max_train_samples"):
        train_n = min(train_n, int(config["max_train_samples"]))
    if config.get("max_test_samples"):
        test_n = min(test_n, int(config["max_test_samples"]))
    return float(config.get("epochs", 3)) * (train_n + EVAL_WEIGHT * test_n)


class Estimator:
    """Expected seconds of a cell: overhead(clients) + seconds-per-sample(paradigm, dataset) x work units.

    Priors come from the tables above (or the suite's ``estimate`` key); every finished cell refines them:
    the per-(paradigm, dataset) rate becomes the mean observed rate, unseen pairs are scaled from what the
    same dataset (or any dataset) observed, and the start-up overhead is rescaled by the median observed
    ratio to its prior.
    """

    def __init__(self, seconds_per_sample: Mapping[str, float] | None = None, overhead_seconds: float | None = None,
                 per_client_seconds: float | None = None):
        self.sps_prior = {**PRIOR_SECONDS_PER_SAMPLE, **dict(seconds_per_sample or {})}
        self.overhead_base = 4.0 if overhead_seconds is None else float(overhead_seconds)
        self.overhead_per_client = 2.0 if per_client_seconds is None else float(per_client_seconds)
        self.rates: dict[tuple[str, str], list[float]] = {}
        self.overhead_ratios: list[float] = []

    @classmethod
    def for_suite(cls, suite: Suite) -> "Estimator":
        est = suite.estimate
        return cls(est.get("seconds_per_sample"), est.get("overhead_seconds"), est.get("per_client_seconds"))

    def _prior_rate(self, paradigm: str, dataset: str) -> float:
        from slperf.common.paradigms import registry

        factor = CENTRALIZED_TIME_FACTOR if paradigm == CENTRALIZED else registry.get(paradigm).time_factor
        return self.sps_prior.get(dataset, DEFAULT_SECONDS_PER_SAMPLE) * factor

    def prior_overhead(self, clients: int | None) -> float:
        if not clients:  # centralized: one process start-up
            return self.overhead_base * 0.75
        return self.overhead_base + self.overhead_per_client * clients

    def observe(self, row: Mapping[str, Any]) -> None:
        if row.get("status") != "ok":
            return
        config = row.get("config") or {}
        units = work_units(config) if config else 0.0
        train = row.get("train_seconds")
        total = row.get("total_seconds")
        if units > 0 and train:
            self.rates.setdefault((row["paradigm"], row["dataset"]), []).append(float(train) / units)
        if total is not None and train is not None:
            prior = self.prior_overhead(row.get("clients"))
            self.overhead_ratios.append(max(0.0, float(total) - float(train)) / prior)

    def rate(self, paradigm: str, dataset: str) -> tuple[float, str]:
        if (paradigm, dataset) in self.rates:
            seen = self.rates[(paradigm, dataset)]
            return statistics.fmean(seen), f"{len(seen)} finished {paradigm}/{dataset} cell(s)"
        same_ds = [(p, statistics.fmean(v)) for (p, d), v in self.rates.items() if d == dataset]
        if same_ds:
            scale = statistics.fmean(r / self._prior_rate(p, dataset) for p, r in same_ds)
            return self._prior_rate(paradigm, dataset) * scale, f"prior rescaled by {len(same_ds)} {dataset} paradigm(s)"
        if self.rates:
            scale = statistics.fmean(statistics.fmean(v) / self._prior_rate(p, d) for (p, d), v in self.rates.items())
            return self._prior_rate(paradigm, dataset) * scale, "prior rescaled by other datasets"
        return self._prior_rate(paradigm, dataset), "prior table"

    def estimate(self, cell: Cell) -> tuple[float, str]:
        rate, basis = self.rate(cell.paradigm, cell.dataset)
        overhead = self.prior_overhead(cell.clients)
        if self.overhead_ratios:
            overhead *= statistics.median(self.overhead_ratios)
        return overhead + rate * work_units(cell.config), basis


# ---- results store --------------------------------------------------------------------------------------------

class ResultsStore:
    """results.jsonl in the output folder: rows appended as cells finish, the last row of a key wins."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "results.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that cell simply runs again
            if isinstance(row, dict) and "key" in row:
                rows[row["key"]] = row
        return rows

    def append(self, row: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


# ---- rows ---------------------------------------------------------------------------------------------------

def rounds_to_target(curve: Sequence[Mapping[str, Any]], target: float | None) -> int | None:
    """The first (1-based) round whose test accuracy reaches the target, None if none does."""
    if target is None:
        return None
    for i, point in enumerate(curve):
        acc = point.get("test_accuracy")
        if acc is not None and acc >= target:
            return int(point.get("round", i + 1))
    return None


def finalize_row(cell: Cell, measured: Mapping[str, Any], *, target: float | None) -> dict[str, Any]:
    """A results row: the cell's identity and config plus what the runner measured, with the figures that
    follow from the curve (final/best accuracy, rounds to target) filled in when the runner left them out."""
    curve = list(measured.get("curve") or [])
    accs = [p["test_accuracy"] for p in curve if p.get("test_accuracy") is not None]
    row: dict[str, Any] = {
        "key": cell.key, "config_hash": cell.config_hash, "status": "ok", "error": "",
        "paradigm": cell.paradigm, "dataset": cell.dataset,
        "partition": cell.partition.label if cell.partition else "all",
        "partition_method": cell.config.get("partition_method") if cell.partition else None,
        "clients": cell.clients, "seed": cell.seed,
        "epochs": cell.config.get("epochs"), "batch_size": cell.config.get("batch_size"),
        "lr": cell.config.get("lr"), "model": cell.config.get("model"),
        "final_accuracy": accs[-1] if accs else None, "best_accuracy": max(accs) if accs else None,
        "target_accuracy": target,
    }
    row.update({k: v for k, v in measured.items() if k not in ("curve",)})
    if row.get("final_accuracy") is None and accs:
        row["final_accuracy"] = accs[-1]
    row["rounds"] = measured.get("rounds", len(curve))
    row["rounds_to_target"] = rounds_to_target(curve, target)
    clients = cell.clients or 1
    for direction in ("up", "down"):
        total = row.get(f"bytes_{direction}")
        if total is not None and row.get(f"bytes_{direction}_per_client") is None:
            row[f"bytes_{direction}_per_client"] = total / clients
    if row.get("train_seconds") is None and curve:
        row["train_seconds"] = sum(float(p.get("round_seconds", 0.0)) for p in curve)
    row["config"] = dict(cell.config)
    row["curve"] = curve
    return row


def failed_row(cell: Cell, error: str, *, target: float | None) -> dict[str, Any]:
    row = finalize_row(cell, {}, target=target)
    row.update(status="failed", error=error)
    return row


def curve_from_metrics(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-round points from a run's metrics.jsonl: cumulative bytes (up + down) and cumulative round time."""
    out: list[dict[str, Any]] = []
    seconds = 0.0
    for record in sorted(records, key=lambda r: r["round"]):
        seconds += float(record.get("round_seconds", 0.0))
        out.append({
            "round": int(record["round"]) + 1,
            "test_accuracy": record.get("test_accuracy"),
            "test_loss": record.get("test_loss"),
            "train_loss": record.get("train_loss"),
            "bytes": int(record.get("bytes_up", 0)) + int(record.get("bytes_down", 0)),
            "bytes_up": int(record.get("bytes_up", 0)),
            "bytes_down": int(record.get("bytes_down", 0)),
            "round_seconds": float(record.get("round_seconds", 0.0)),
            "seconds": seconds,
        })
    return out


# ---- default runners ----------------------------------------------------------------------------------------

Echo = Callable[[str], None]
CellRunner = Callable[[Cell, Path], Mapping[str, Any]]


def _write_cell_config(cell: Cell, work_dir: Path) -> Path:
    path = work_dir / "configs" / f"{cell.slug}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {cell.key} (config hash {cell.config_hash})\n" + yaml.safe_dump(dict(cell.config), sort_keys=True))
    return path


def run_federation_cell(cell: Cell, work_dir: Path, *, echo: Echo = print, show_progress: bool = True) -> dict[str, Any]:
    """One cell as a real local federation; peak RSS of the server and of every client daemon is recorded."""
    from slperf.common.bench_procs import FederationProbe, mib
    from slperf.slserver.run_folder import RunFolder
    from slperf.federation import run_federation

    config_path = _write_cell_config(cell, work_dir)
    started = time.monotonic()
    with FederationProbe() as probe:
        summary = run_federation(config_path, work_dir / "runs", show_progress=show_progress, echo=echo)
    total = time.monotonic() - started
    records = RunFolder(Path(summary["run_dir"])).read_metrics()
    curve = curve_from_metrics(records)
    peaks = probe.peaks
    client_peaks = {cid: mib(v) for cid, v in sorted(peaks["clients"].items())}
    values = [v for v in client_peaks.values() if v is not None]
    return {
        "run_dir": summary["run_dir"],
        "run_id": summary.get("run_id"),
        "rounds": summary.get("rounds", len(curve)),
        "final_accuracy": summary.get("test_accuracy"),
        "best_accuracy": summary.get("best_test_accuracy"),
        "bytes_up": summary.get("bytes_up"),
        "bytes_down": summary.get("bytes_down"),
        "train_bytes_up": summary.get("train_bytes_up"),
        "train_bytes_down": summary.get("train_bytes_down"),
        "train_seconds": sum(p["round_seconds"] for p in curve),
        "run_seconds": summary.get("wall_seconds"),
        "total_seconds": total,
        "peak_rss_server_mb": mib(peaks["server"]),
        "peak_rss_client_max_mb": max(values) if values else None,
        "peak_rss_client_mean_mb": statistics.fmean(values) if values else None,
        "peak_rss_clients_mb": client_peaks,
        "curve": curve,
    }


def run_centralized_cell(cell: Cell, work_dir: Path, *, echo: Echo = print, show_progress: bool = True) -> dict[str, Any]:
    """The centralized baseline in its own process (so its peak RSS is its own), one JSON line per epoch."""
    from slperf.common.bench_procs import mib

    config_path = _write_cell_config(cell, work_dir)
    out_path = work_dir / "centralized" / f"{cell.slug}.json"
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    log_path = work_dir / "centralized" / f"{cell.slug}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=cell.epochs, desc=CENTRALIZED, unit="epoch", file=sys.stderr, leave=False)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "slperf.common.centralized", str(config_path),
                                 "--out", str(out_path)], stdout=subprocess.PIPE, stderr=log, env=env)
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "epoch":
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(acc=f"{100 * event['test_accuracy']:.2f}%")
                else:
                    echo(f"epoch {event['round']}/{cell.epochs}: test accuracy {100 * event['test_accuracy']:.2f}%")
        code = proc.wait()
    if bar is not None:
        bar.close()
    if code != 0:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        raise RuntimeError(f"centralized baseline exited with code {code}: {tail}")
    result = json.loads(out_path.read_text())
    return {
        "rounds": result["rounds"],
        "final_accuracy": result["test_accuracy"],
        "best_accuracy": result["best_test_accuracy"],
        "bytes_up": 0, "bytes_down": 0, "train_bytes_up": 0, "train_bytes_down": 0,
        "train_seconds": result["train_seconds"],
        "run_seconds": result.get("process_seconds"),
        "total_seconds": time.monotonic() - started,
        "peak_rss_server_mb": None,
        "peak_rss_client_max_mb": mib(result.get("peak_rss_bytes")),
        "peak_rss_client_mean_mb": mib(result.get("peak_rss_bytes")),
        "run_dir": str(out_path),
        "curve": result["curve"],
    }


def default_runner(cell: Cell, work_dir: Path, *, echo: Echo = print, show_progress: bool = True) -> dict[str, Any]:
    if cell.paradigm == CENTRALIZED:
        return run_centralized_cell(cell, work_dir, echo=echo, show_progress=show_progress)
    return run_federation_cell(cell, work_dir, echo=echo, show_progress=show_progress)


# ---- the suite ----------------------------------------------------------------------------------------------

@dataclass
class SuiteOutcome:
    suite: Suite
    out_dir: Path
    rows: list[dict[str, Any]]       # the latest row of every cell of the matrix that has one, in matrix order
    ran: list[str]                   # keys run this time
    skipped: list[str]               # keys already finished (same config) and not run again
    failed: list[str]                # keys that failed this time
    report: Path | None = None
    plots: list[Path] = field(default_factory=list)


def _error_text(exc: BaseException) -> str:
    """One line: gRPC errors by their status and details, others by type and message."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{type(exc).__name__}: {code().name}: {details()}"
        except Exception:
            pass
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _fmt_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def machine_info() -> dict[str, Any]:
    from slperf.common.bench_procs import loadavg

    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "loadavg": loadavg()}
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    return info


def run_suite(suite: str | Path | Suite, out_dir: str | Path | None = None, *, runner: CellRunner | None = None,
              show_progress: bool = True, echo: Echo | None = None, plots: bool = True,
              only: Callable[[Cell], bool] | None = None) -> SuiteOutcome:
    """Runs every cell of a suite that has not finished yet, then writes results.csv, report.md and plots.

    suite: a Suite, a YAML file, or a NAME (benchmarks/suites/NAME.yaml). out_dir: the results folder (default
    ``runs/bench/<suite name>``); re-running into it resumes. runner(cell, work_dir) -> measured figures
    (default: a real federation, or the centralized baseline in its own process); a runner that raises marks
    the cell failed and the suite goes on (KeyboardInterrupt stops it, keeping what finished). only: run just
    the cells it accepts (the report still covers every finished cell).
    """
    from slperf.common import bench_report

    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    cells = expand(suite)  # a broken suite fails here, before any folder is made
    out = Path(out_dir) if out_dir is not None else Path("runs") / "bench" / suite.name
    out.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(out)
    previous = store.load()
    estimator = Estimator.for_suite(suite)
    for row in previous.values():
        estimator.observe(row)

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cells), desc=f"suite {suite.name}", unit="cell", file=sys.stderr, position=0)

    def say(message: str) -> None:
        if echo is not None:
            echo(message)
        elif bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, flush=True)

    if runner is None:
        runner = functools.partial(default_runner, echo=say, show_progress=show_progress)

    def is_done(cell: Cell) -> bool:
        row = previous.get(cell.key)
        return bool(row and row.get("status") == "ok" and row.get("config_hash") == cell.config_hash)

    todo = [c for c in cells if not is_done(c) and (only is None or only(c))]
    skipped = [c.key for c in cells if is_done(c)]
    if bar is not None:
        bar.update(len(skipped))
    if skipped:
        say(f"{len(skipped)} of {len(cells)} cells already finished in {out}; skipping them")
    for note in preflight(todo):
        say(f"note: {note}")
    remaining = sum(estimator.estimate(c)[0] for c in todo)
    say(f"suite {suite.name}: {len(todo)} cell(s) to run, expected ≈ {_fmt_seconds(remaining)} in total")

    ran: list[str] = []
    failed: list[str] = []
    for n, cell in enumerate(todo, 1):
        expected, basis = estimator.estimate(cell)
        remaining = sum(estimator.estimate(c)[0] for c in todo[n - 1:])
        say(f"[{n}/{len(todo)}] {cell.key}: expected ≈ {_fmt_seconds(expected)} ({basis}); "
            f"≈ {_fmt_seconds(remaining)} left for the matrix")
        if bar is not None:
            bar.set_postfix_str(cell.key)
        target = suite.target_for(cell.dataset)
        started_at = time.time()
        t0 = time.monotonic()
        try:
            measured = runner(cell, out)
            row = finalize_row(cell, measured, target=target)
        except KeyboardInterrupt:
            say(f"interrupted during {cell.key}; finished cells are kept in {store.path}")
            raise
        except Exception as exc:  # one broken cell must not lose the rest of the matrix
            row = failed_row(cell, _error_text(exc), target=target)
            failed.append(cell.key)
            say(f"    FAILED {cell.key}: {row['error']}")
        elapsed = time.monotonic() - t0
        row.setdefault("total_seconds", elapsed)
        row["expected_seconds"] = expected
        row["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at))
        store.append(row)
        previous[cell.key] = row
        estimator.observe(row)
        ran.append(cell.key)
        if row["status"] == "ok":
            acc = row.get("final_accuracy")
            say(f"    done in {_fmt_seconds(elapsed)}: final accuracy "
                f"{'n/a' if acc is None else f'{100 * acc:.2f}%'}")
        if bar is not None:
            bar.update(1)
        rows_now = [previous[c.key] for c in cells if c.key in previous]
        bench_report.write_tables(rows_now, out, suite=suite, cells=cells)
    if bar is not None:
        bar.close()

    rows = [previous[c.key] for c in cells if c.key in previous]
    report = bench_report.write_tables(rows, out, suite=suite, cells=cells)
    plot_paths = bench_report.write_plots(rows, out / "plots") if plots else []
    if plot_paths:
        report = bench_report.write_tables(rows, out, suite=suite, cells=cells, plots=plot_paths)
    say(f"results: {out / 'results.csv'}, report: {report}" + (f", {len(plot_paths)} plots" if plot_paths else ""))
    return SuiteOutcome(suite=suite, out_dir=out, rows=rows, ran=ran, skipped=skipped, failed=failed,
                        report=report, plots=plot_paths)


__all__ = [
    "CENTRALIZED", "Cell", "CellRunner", "Estimator", "Partition", "ResultsStore", "Suite", "SuiteError",
    "SuiteOutcome", "curve_from_metrics", "default_runner", "expand", "finalize_row", "load_suite",
    "parse_partition", "parse_suite", "preflight", "resolve_suite_path", "rounds_to_target", "run_suite",
    "work_units",
]
