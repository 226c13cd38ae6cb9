"""Benchmark suites: one YAML file describes a matrix of paradigms x datasets x partitions x client counts x
seeds; ``expand`` turns it into cells, each with a validated run config and a stable key (e.g.
``splitfed_v1/mnist/hetero-a0.5/c3/s0``), so that a typo fails before anything runs and a re-run can tell
which cells already finished with the same config.

The built-in suites (``quick``, ``paper``) are package data in ``slperf/bench/suites/`` and are found by
name through ``importlib.resources``, so an installed slperf finds them without a source tree; any other
suite is given as a file path.

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
      attacks: [dcor, inversion_whitebox]     # run-config ``attacks:`` of every cell, or an axis: [[dcor], [dcor, ...]]
      defenses:                         # an axis of named variants, each the cells' run-config ``defenses:``
        none: {}
        nopeek-0.5: {nopeek: {alpha: 0.5}}
      networks: [{name: wan, rate_mbit: 100, delay_ms: 25}]   # optional: shaped client links (network:)
      compress: [none, int8:channel]    # optional: the codec both ways, or {up: C, down: C} (compress:)
    exclude: [{paradigm: fedavg, partition: label_skew-k2}]   # skip cells matching every given field
    overrides:
      datasets: {adult: {model: mlp}}              # applied over base, for that dataset
      paradigms: {vertical: {partition_method: vertical}}   # applied last, for that paradigm
    target_accuracy: 0.9                # or per dataset {mnist: 0.97, cifar10: 0.6}
    centralized: true                   # a centralized baseline row per dataset and seed (default true)
    estimate: {seconds_per_sample: {mnist: 0.0004}, overhead_seconds: 8}   # priors for the time estimates
    resources: {cpus: 2, gpus: 1}       # what one cell needs (default 1 CPU, 0 GPU): see Resources

Partitions: ``homo`` (alias ``iid``), ``hetero:ALPHA`` (alias ``dirichlet:ALPHA``), ``label_skew:CLASSES``,
``base_on_class``, ``vertical``, or a mapping ``{method, alpha, classes}``. Precedence of config keys, lowest
first: ``base``, dataset overrides, the matrix axes, paradigm overrides.

Privacy axes: ``attacks`` is one list of attack names for every cell, or a list of such lists (an axis: one
cell per list, ``atk-A+B`` in its key); an attack a cell's paradigm cannot be attacked with (its threat model,
``slperf paradigms --details``) fails the expansion, naming the cell: give that paradigm its own list in
``overrides.paradigms`` or exclude it. ``defenses`` maps variant names to the cells' run-config ``defenses:``
value (``{}``: undefended); the name goes into the key (``def-NAME``) and the row's ``defense``, and an exclude
rule may match it (``{paradigm: ushaped, defense: label_dp}`` matches every ``label_dp-...`` variant).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePath
from typing import Any

import yaml

from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_mapping

# The paradigm name of a centralized baseline cell (one process, no federation); not a registered paradigm.
CENTRALIZED = "centralized"
SUITE_EXTENSIONS = (".yaml", ".yml")


class SuiteError(ConfigError):
    """A suite file problem; the message names the key or cell."""


_PARTITION_ALIASES = {
    "iid": "homo",
    "dirichlet": "hetero",
    "noniid": "hetero",
    "base_on_class_intersection": "label_skew",
}


@dataclass(frozen=True)
class Partition:
    method: str
    alpha: float | None = None
    classes: int | None = None

    @classmethod
    def from_label(cls, label: str) -> Partition:
        """The partition a results row's ``partition`` label names (rows keep the label, not the fields)."""
        method, sep, arg = label.partition("-")
        try:
            if sep and method == "hetero" and arg.startswith("a"):
                return cls(method, alpha=float(arg[1:]))
            if sep and method == "label_skew" and arg.startswith("k"):
                return cls(method, classes=int(arg[1:]))
        except ValueError:
            pass
        return cls(label)

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
class Defense:
    """One variant of the suite's ``defenses`` axis: its name (in the cell's key and row) and the run-config
    ``defenses:`` mapping it gives the cell (empty: undefended, and the key is left out of the config)."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Cell:
    """One run of the matrix (or a centralized baseline: ``paradigm == "centralized"``). ``defense``: the variant
    of the suite's defenses axis (None: the suite has none); ``attack_set``: the attack list of the cell when the
    suite's attacks are an axis of several lists (None otherwise: then the key does not vary with it)."""

    paradigm: str
    dataset: str
    partition: Partition | None
    clients: int | None
    seed: int
    config: Mapping[str, Any] = field(compare=False, hash=False)
    defense: str | None = None
    attack_set: tuple[str, ...] | None = None
    network: str = ""  # the label of the matrix's network profile ("" when the matrix has no networks axis)
    compression: str = ""  # the label of the matrix's compress codec ("" when it has no compress axis)

    @property
    def key(self) -> str:
        if self.paradigm == CENTRALIZED:
            return f"{CENTRALIZED}/{self.dataset}/all/s{self.seed}"
        assert self.partition is not None
        key = f"{self.paradigm}/{self.dataset}/{self.partition.label}/c{self.clients}/s{self.seed}"
        if self.attack_set is not None:
            key += f"/atk-{attack_label(self.attack_set)}"
        if self.defense is not None:
            key += f"/def-{self.defense}"
        if self.network:
            key += f"/net-{self.network}"
        if self.compression:
            key += f"/z-{self.compression}"
        return key

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


def attack_label(attacks: Sequence[str]) -> str:
    return "+".join(attacks) if attacks else "none"


@dataclass(frozen=True)
class Resources:
    """What one cell of the suite needs: the Ray executor asks Ray for this much per cell task (so it decides
    how many cells run at once, and on which node); the local executor runs one cell at a time and only checks
    that this machine has that much. Fractions below 1 share a CPU or GPU between cells (Ray's rule: above 1,
    whole numbers only). A cell's processes are not confined to its CPUs; ``torch_threads`` sets their use."""

    cpus: float = 1.0
    gpus: float = 0.0

    def line(self) -> str:
        return f"{_num(self.cpus)} CPU(s), {_num(self.gpus)} GPU(s)"


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
    networks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (label, network: value)
    compressions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (label, compress: value)
    dataset_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    paradigm_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    target_accuracy: float | dict[str, float] | None = None
    centralized: bool = True
    estimate: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    source: Traversable | None = None
    attack_sets: list[tuple[str, ...]] | None = None  # None: no attacks axis (base or overrides may still set them)
    defenses: list[Defense] | None = None  # None: no defenses axis

    @property
    def attacks_vary(self) -> bool:
        """The attacks axis has several lists, so a cell's key names its list."""
        return self.attack_sets is not None and len(self.attack_sets) > 1

    def target_for(self, dataset: str) -> float | None:
        if isinstance(self.target_accuracy, Mapping):
            value = self.target_accuracy.get(dataset)
            return None if value is None else float(value)
        return None if self.target_accuracy is None else float(self.target_accuracy)


def builtin_suites() -> Traversable:
    """The folder of the suites shipped with slperf (package data, so it works installed as well)."""
    return resources.files("slperf.bench") / "suites"


def builtin_suite_names() -> list[str]:
    return sorted(
        PurePath(p.name).stem for p in builtin_suites().iterdir() if p.is_file() and p.name.endswith(SUITE_EXTENSIONS)
    )


def resolve_suite_path(suite: str | Path) -> Traversable:
    """A suite file path, or the NAME of a built-in suite (``slperf/bench/suites/NAME.yaml``)."""
    path = Path(suite)
    if path.suffix in SUITE_EXTENSIONS or path.exists() or os.sep in str(suite):
        if not path.exists():
            raise SuiteError(f"suite file not found: {path}")
        return path
    for ext in SUITE_EXTENSIONS:
        candidate = builtin_suites() / f"{suite}{ext}"
        if candidate.is_file():
            return candidate
    known = builtin_suite_names()
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

    return registry.variant_names()  # psl_sum, ushaped_parallel, ... are cells of their own


def _canonical_paradigm(name: str) -> str:
    from slperf.common.paradigms import registry

    try:
        return registry.variant_of(str(name))
    except ConfigError as exc:
        raise SuiteError(f"suite: {exc}") from None


_SUITE_KEYS = {
    "name",
    "description",
    "base",
    "matrix",
    "exclude",
    "overrides",
    "target_accuracy",
    "centralized",
    "estimate",
    "resources",
}
_MATRIX_KEYS = {
    "paradigms",
    "datasets",
    "partitions",
    "clients",
    "seeds",
    "attacks",
    "defenses",
    "networks",
    "compress",
}
# Config keys that the matrix sets for every cell; a base that set them would be silently overwritten.
_MATRIX_CONFIG_KEYS = (
    "paradigm",
    "variants_type",
    "dataset",
    "clients",
    "client_number",
    "seed",
    "partition_method",
    "partition_alpha",
    "class_number_per_client",
    "client_ids",
)
_EXCLUDE_FIELDS = {"paradigm", "dataset", "partition", "clients", "seed", "defense", "network", "compression"}


@dataclass(frozen=True)
class _Axes:
    paradigms: list[str]
    datasets: list[str]
    partitions: list[Partition]
    clients: list[int]
    seeds: list[int]
    attack_sets: list[tuple[str, ...]] | None
    defenses: list[Defense] | None
    networks: list[tuple[str, dict[str, Any]]]
    compressions: list[tuple[str, dict[str, Any]]]


def _parse_attacks(matrix: Mapping[str, Any], where: str) -> list[tuple[str, ...]] | None:
    """``[a, b]`` (one list for every cell) or ``[[a], [a, b]]`` (an axis); names are checked per cell, against
    its paradigm, when the cell's config is validated."""
    if "attacks" not in matrix:
        return None
    spec = matrix["attacks"]
    if not isinstance(spec, list) or not spec:
        raise SuiteError(f"{where}: matrix attacks must be a list of attack names, or a list of such lists")
    if all(isinstance(a, str) for a in spec):
        sets = [spec]
    elif all(isinstance(a, list) for a in spec):
        sets = spec
    else:
        raise SuiteError(f"{where}: matrix attacks {spec!r} mixes names and lists (a list of names, or of lists)")
    out: list[tuple[str, ...]] = []
    for names in sets:
        if not all(isinstance(n, str) and n for n in names):
            raise SuiteError(f"{where}: matrix attacks: {names!r} must be attack names")
        if tuple(names) in out:
            raise SuiteError(f"{where}: matrix attacks lists {names!r} twice")
        out.append(tuple(names))
    return out


def _parse_defenses(matrix: Mapping[str, Any], where: str) -> list[Defense] | None:
    """A mapping variant name -> the run-config ``defenses:`` value ({} or null: undefended)."""
    if "defenses" not in matrix:
        return None
    spec = matrix["defenses"]
    if not isinstance(spec, Mapping) or not spec:
        raise SuiteError(
            f"{where}: matrix defenses must be a mapping of variant names to run-config 'defenses' mappings, "
            "e.g. {none: {}, nopeek-0.5: {nopeek: {alpha: 0.5}}}"
        )
    out: list[Defense] = []
    for name, settings in spec.items():
        if not isinstance(name, str) or not name or "/" in name or name != name.strip():
            raise SuiteError(f"{where}: matrix defenses: variant name {name!r} must be a non-empty string without '/'")
        settings = {} if settings is None else settings
        if not isinstance(settings, Mapping):
            raise SuiteError(
                f"{where}: matrix defenses: variant {name!r} must map to a run-config 'defenses' mapping, "
                f"got {settings!r}"
            )
        out.append(Defense(name, dict(settings)))
    return out


def _parse_networks(matrix: Mapping[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``networks`` axis: each a ``network:`` value, labelled by its name (or its rate and delay)."""
    from slperf.common.network_profile import NetworkConfigError, parse_profile

    if "networks" not in matrix:
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    for raw in _list(matrix, "networks"):
        if not isinstance(raw, Mapping):
            raise SuiteError(
                f"{where}: each of matrix networks must be a mapping like {{rate_mbit: 100, delay_ms: 25}}"
            )
        try:
            label = parse_profile({k: v for k, v in raw.items() if k != "clients"}).label
        except NetworkConfigError as exc:
            raise SuiteError(f"{where}: matrix networks: {exc}") from None
        out.append((label, dict(raw)))
    labels = [label for label, _ in out]
    if len(labels) != len(set(labels)):
        raise SuiteError(f"{where}: matrix networks has two profiles named alike ({', '.join(labels)}): name them")
    return out


def _parse_compressions(matrix: Mapping[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``compress`` axis: ``none``, a codec for both directions, or ``{up: C, down: C}``."""
    if "compress" not in matrix:
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    for raw in _list(matrix, "compress"):
        if isinstance(raw, str):
            value = {} if raw == "none" else {"up": raw, "down": raw}
            out.append((raw, value))
        elif isinstance(raw, Mapping) and raw and set(raw) <= {"up", "down"}:
            out.append((f"{raw.get('up', 'none')}-{raw.get('down', 'none')}", dict(raw)))
        else:
            raise SuiteError(f"{where}: matrix compress entries are a codec name or {{up: C, down: C}}, got {raw!r}")
    return out


def _parse_matrix(raw: Mapping[str, Any], where: str) -> _Axes:
    matrix = raw.get("matrix")
    if not isinstance(matrix, Mapping):
        raise SuiteError(f"{where}: 'matrix' must be a mapping with paradigms, datasets, partitions, clients, seeds")
    m_unknown = sorted(set(matrix) - _MATRIX_KEYS)
    if m_unknown:
        raise SuiteError(f"{where}: unknown matrix keys {m_unknown}")
    if matrix.get("paradigms", "all") == "all":
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
                raise SuiteError(
                    f"{where}: matrix {key} must be {'positive' if key == 'clients' else 'non-negative'} "
                    f"integers, got {v!r}"
                )
    networks, compressions = _parse_networks(matrix, where), _parse_compressions(matrix, where)
    return _Axes(
        paradigms,
        datasets,
        partitions,
        [int(c) for c in clients],
        [int(s) for s in seeds],
        _parse_attacks(matrix, where),
        _parse_defenses(matrix, where),
        networks,
        compressions,
    )


def _parse_base(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise SuiteError(f"{where}: 'base' must be a mapping of config keys")
    for axis in _MATRIX_CONFIG_KEYS:
        if axis in base:
            raise SuiteError(f"{where}: base key '{axis}' is set by the matrix; put it in 'matrix' instead")
    return dict(base)


def _parse_overrides(raw: Mapping[str, Any], where: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per-dataset and per-paradigm config overrides (paradigms by their canonical names)."""
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, Mapping) or set(overrides) - {"datasets", "paradigms"}:
        raise SuiteError(f"{where}: 'overrides' must be a mapping with 'datasets' and/or 'paradigms'")
    ds_over = {str(k): dict(v or {}) for k, v in (overrides.get("datasets") or {}).items()}
    pd_over = {_canonical_paradigm(k): dict(v or {}) for k, v in (overrides.get("paradigms") or {}).items()}
    return ds_over, pd_over


def _parse_exclude(raw: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, Mapping) for e in exclude):
        raise SuiteError(f"{where}: 'exclude' must be a list of mappings")
    for rule in exclude:
        bad = set(rule) - _EXCLUDE_FIELDS
        if bad:
            raise SuiteError(f"{where}: exclude rule {dict(rule)} has unknown fields {sorted(bad)}")
    return [dict(e) for e in exclude]


def _parse_target(raw: Mapping[str, Any], where: str) -> float | dict[str, float] | None:
    target = raw.get("target_accuracy")
    if target is not None and not isinstance(target, (int, float, Mapping)):
        raise SuiteError(f"{where}: target_accuracy must be a number in 0..1 or a mapping dataset -> number")
    for value in target.values() if isinstance(target, Mapping) else [target] if target is not None else []:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise SuiteError(f"{where}: target_accuracy values must be in (0, 1], got {value!r}")
    return dict(target) if isinstance(target, Mapping) else target


def _parse_resources(raw: Mapping[str, Any], where: str) -> Resources:
    spec = raw.get("resources")
    if spec is None:
        return Resources()
    if not isinstance(spec, Mapping):
        raise SuiteError(f"{where}: resources must be a mapping {{cpus: N, gpus: M}}")
    unknown = sorted(set(spec) - {"cpus", "gpus"})
    if unknown:
        raise SuiteError(f"{where}: unknown resources keys {unknown} (known: cpus, gpus)")
    values: dict[str, float] = {}
    for key, default, least in (("cpus", 1.0, "positive"), ("gpus", 0.0, "non-negative")):
        value = spec.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (key == "cpus" and value == 0)
        ):
            raise SuiteError(f"{where}: resources {key} must be a {least} number, got {value!r}")
        if value > 1 and value != int(value):
            raise SuiteError(f"{where}: resources {key} above 1 must be a whole number (Ray's rule), got {value!r}")
        values[key] = float(value)
    return Resources(cpus=values["cpus"], gpus=values["gpus"])


def parse_suite(raw: Any, *, source: Traversable | None = None, name: str | None = None) -> Suite:
    """Validates a suite mapping; every problem is a SuiteError naming the key."""
    where = str(source) if source else "suite"
    if not isinstance(raw, Mapping):
        raise SuiteError(f"{where}: the top level must be a mapping")
    unknown = sorted(set(raw) - _SUITE_KEYS)
    if unknown:
        raise SuiteError(f"{where}: unknown suite keys {unknown} (known: {', '.join(sorted(_SUITE_KEYS))})")
    axes = _parse_matrix(raw, where)
    base = _parse_base(raw, where)
    for axis, present in (("attacks", axes.attack_sets), ("defenses", axes.defenses)):
        if present is not None and axis in base:
            raise SuiteError(f"{where}: base key '{axis}' is also a matrix axis; keep one of them")
    for axis, key in ((axes.networks, "network"), (axes.compressions, "compress")):
        if axis and key in base:
            raise SuiteError(f"{where}: base key '{key}' is set by the matrix; put it in 'matrix' instead")
    ds_over, pd_over = _parse_overrides(raw, where)
    exclude = _parse_exclude(raw, where)
    if axes.defenses is None and any("defense" in rule for rule in exclude):
        raise SuiteError(f"{where}: an exclude rule names a defense, but the matrix has no 'defenses' axis")
    target = _parse_target(raw, where)
    centralized = raw.get("centralized", True)
    if not isinstance(centralized, bool):
        raise SuiteError(f"{where}: centralized must be true or false")
    estimate = raw.get("estimate") or {}
    if not isinstance(estimate, Mapping):
        raise SuiteError(f"{where}: estimate must be a mapping")
    suite_name = str(raw.get("name") or name or (PurePath(source.name).stem if source else "suite"))
    return Suite(
        name=suite_name,
        description=str(raw.get("description", "")),
        base=base,
        paradigms=axes.paradigms,
        datasets=axes.datasets,
        partitions=axes.partitions,
        clients=axes.clients,
        seeds=axes.seeds,
        exclude=exclude,
        networks=axes.networks,
        compressions=axes.compressions,
        dataset_overrides=ds_over,
        paradigm_overrides=pd_over,
        target_accuracy=target,
        centralized=centralized,
        estimate=dict(estimate),
        resources=_parse_resources(raw, where),
        source=source,
        attack_sets=axes.attack_sets,
        defenses=axes.defenses,
    )


def load_suite(suite: str | Path) -> Suite:
    path = resolve_suite_path(suite)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    return parse_suite(raw, source=path)


def _excluded(suite: Suite, cell: Cell) -> bool:
    fields = {
        "paradigm": cell.paradigm,
        "dataset": cell.dataset,
        "partition": cell.partition.label if cell.partition else None,
        "clients": cell.clients,
        "seed": cell.seed,
        "defense": cell.defense,
        "network": cell.network,
        "compression": cell.compression,
    }
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
        message = str(exc)  # the loader names the source; a check after loading (attacks) may not
        raise SuiteError(message if key in message else f"cell {key}: {message}") from None
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
                config = {
                    **suite.base,
                    **suite.dataset_overrides.get(dataset, {}),
                    "dataset": dataset,
                    "seed": seed,
                    "clients": 1,
                    "partition_method": "homo",
                }
                config.pop("backend", None)  # a baseline has no parties to place: the same cell under either backend
                for key in ("attacks", "defenses"):  # nobody to attack or defend: one process holds everything
                    config.pop(key, None)
                cell = Cell(CENTRALIZED, dataset, None, None, seed, {})
                cells.append(Cell(CENTRALIZED, dataset, None, None, seed, _validate(config, cell.key)))
    for dataset in suite.datasets:
        for clients in suite.clients:
            for partition in suite.partitions:
                for seed in suite.seeds:
                    for (defense, attacks), ((net, network), (zip_, compress)) in itertools.product(
                        _privacy_variants(suite), _link_variants(suite)
                    ):
                        for paradigm in suite.paradigms:
                            config = {
                                **suite.base,
                                **suite.dataset_overrides.get(dataset, {}),
                                "paradigm": paradigm,
                                "dataset": dataset,
                                "clients": clients,
                                "seed": seed,
                                **partition.config_keys(),
                                **_privacy_keys(defense, attacks),
                                **({"network": network} if net else {}),
                                **({"compress": compress} if zip_ else {}),
                                **suite.paradigm_overrides.get(paradigm, {}),
                            }
                            probe = Cell(
                                paradigm,
                                dataset,
                                partition,
                                clients,
                                seed,
                                {},
                                defense=defense.name if defense else None,
                                attack_set=attacks if suite.attacks_vary else None,
                                network=net,
                                compression=zip_,
                            )
                            if _excluded(suite, probe):
                                continue
                            cells.append(dataclasses.replace(probe, config=_validate(config, probe.key)))
    keys = [c.key for c in cells]
    if len(keys) != len(set(keys)):
        raise SuiteError(
            "the matrix lists a cell twice (a repeated paradigm, dataset, partition, client count or seed)"
        )
    return cells


def _privacy_variants(suite: Suite) -> list[tuple[Defense | None, tuple[str, ...] | None]]:
    """Every (defense variant, attack list) of the suite's privacy axes; (None, None) when it has neither."""
    defenses: list[Defense | None] = list(suite.defenses) if suite.defenses is not None else [None]
    attack_sets: list[tuple[str, ...] | None] = list(suite.attack_sets) if suite.attack_sets is not None else [None]
    return [(d, a) for d in defenses for a in attack_sets]


def _privacy_keys(defense: Defense | None, attacks: tuple[str, ...] | None) -> dict[str, Any]:
    """The run-config keys a privacy variant sets: ``attacks`` and, unless undefended, ``defenses``."""
    keys: dict[str, Any] = {}
    if attacks is not None:
        keys["attacks"] = list(attacks)
    if defense is not None and defense.settings:
        keys["defenses"] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in defense.settings.items()}
    return keys


def _link_variants(suite: Suite) -> list[tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]]:
    """(network, compression) pairs of the matrix, each ("", {}) when its axis is absent: compression inner."""
    networks = suite.networks or [("", {})]
    compressions = suite.compressions or [("", {})]
    return [(n, c) for n in networks for c in compressions]


def preflight(cells: Sequence[Cell]) -> list[str]:
    """Problems that will make cells fail, found before anything runs: data sets or models nobody has
    registered (the cells still run and fail with the loader's own message; this only says so up front)."""
    from slperf.common.data import DATASETS
    from slperf.common.models import MODELS

    notes: list[str] = []
    datasets = sorted({c.dataset for c in cells})
    missing = [d for d in datasets if d.lower() not in DATASETS]
    if missing:
        notes.append(
            f"data set(s) not registered: {', '.join(missing)} (known: {', '.join(sorted(DATASETS))}); "
            "their cells will fail"
        )
    models = sorted({str(c.config.get("model")) for c in cells})
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        notes.append(
            f"model(s) not registered yet: {', '.join(unknown)} (known now: {', '.join(sorted(MODELS))}); "
            "their cells fail unless a module registers them when the run starts"
        )
    return notes
