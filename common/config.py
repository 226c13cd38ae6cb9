"""Run configuration: the `RunConfig` dataclass, its documented defaults, and the checks of its core keys.

Strictness is deliberate: a typo in a federation config (``partition_alfa``) silently falling back to a
default would make a benchmark compare the wrong things, so unknown and ill-typed keys are errors that
name the key. Paradigm-specific keys (``thred``, ``splitavg_active``, ...) are declared by the paradigm
itself (see ``slperf.common.paradigms``), so adding a paradigm never means editing this file.

This module sits below the paradigms and the data layer and imports neither: reading a config file, text or
JSON, resolving the paradigm's options and checking the data set name happen in config_loader.py, above both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import yaml

from slperf.common.network_profile import NetworkConfigError, NetworkSpec, parse_network
from slperf.common.protocol.compression import Codec, parse_codec


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key and what is wrong."""


@dataclass
class RunConfig:
    """Every key of a run, with its default. Docstrings of the fields live in ``FIELD_DOCS``."""

    paradigm: str = "splitfed_v1"
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    clients: int = 3
    client_ids: list[str] | None = None
    partition_method: str = "homo"
    partition_alpha: float = 0.5
    class_number_per_client: int = 2
    equal_size: bool = False
    partition_method_attributes: int = 9
    data_vertical_list: list[int] | None = None
    model: str = "lenet"
    split_layer: int = 1
    batch_size: int = 64
    epochs: int = 3
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    client_device: str = "cpu"
    amp: str = "none"
    deterministic: bool = False
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    eval_batch_size: int = 500
    client_timeout: float = 300.0
    rejoin_timeout: float = 15.0
    connect_timeout: float | None = None
    phase_timeout: float = 21600.0
    aggregation: str | None = None
    trim_fraction: float | None = None
    torch_threads: int = 0
    backend: str = "federation"
    attacks: list[str] = field(default_factory=list)
    defenses: dict[str, Any] = field(default_factory=dict)
    compress: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)
    client_image: str | None = None
    client_resources: dict[str, Any] = field(default_factory=dict)
    fed_server: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def launcher_keys_set(self) -> list[str]:
        """The launcher-only keys this config sets (LAUNCHER_KEYS), which a server refuses."""
        defaults = RunConfig()
        return [k for k in LAUNCHER_KEYS if getattr(self, k) != getattr(defaults, k)]

    def for_server(self) -> dict[str, Any]:
        """The config a launcher sends the server: its own keys (LAUNCHER_KEYS) back at their defaults."""
        defaults = RunConfig()
        return {**self.to_dict(), **{k: getattr(defaults, k) for k in LAUNCHER_KEYS}}

    def participant_ids(self) -> list[str] | None:
        return list(self.client_ids) if self.client_ids else None


# Keys that the launcher (`slperf federation`, `slperf bench`) applies to the client daemons it starts: shaped links
# and containers. A server, which starts no daemon, refuses them; the launcher sends them at their defaults.
LAUNCHER_KEYS = ("network", "client_image", "client_resources")

FIELD_DOCS: dict[str, str] = {
    "paradigm": "split-learning paradigm (see `slperf paradigms`); SLPerf's variants_type names are aliases",
    "dataset": "dataset name (mnist, ...); loaded offline from the pinned registry artifact or data_dir",
    "data_dir": "folder with the dataset's original files, used instead of the registry artifact",
    "download": "SLPerf's: a data_dir that does not hold the data set is filled from the pinned offline copy (MNIST, "
    "Fashion-MNIST: their IDX files; others are read from the pinned copy), instead of an error",
    "clients": "number of client daemons that take part",
    "client_ids": "explicit client ids to wait for (default: the first `clients` ids to connect, sorted)",
    "partition_method": "homo (IID), hetero (Dirichlet), label_skew, base_on_class, base_on_attribute, vertical",
    "partition_alpha": "Dirichlet concentration for hetero; smaller = more label skew",
    "class_number_per_client": "classes per client for label_skew",
    "equal_size": "truncate every shard to the smallest one (SLPerf's behaviour; off by default)",
    "partition_method_attributes": "base_on_attribute: original attribute column (Adult: 9 = sex, 7 = relationship)",
    "data_vertical_list": "vertical: original attributes per client, in column order, e.g. [6, 4, 4]",
    "model": "model architecture (lenet, ...)",
    "split_layer": "index of the first block that runs on the server",
    "batch_size": "training batch size on every client",
    "epochs": "rounds; in each round every client passes once over its shard",
    "lr": "learning rate (SGD)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "seed": "seed for model init, partitions and batch order; same seed -> same run",
    "device": "torch device of the server's compute: cpu, cuda or cuda:N (checked when the run starts)",
    "client_device": "torch device of every client daemon not started with its own --device (cpu, cuda, cuda:N)",
    "amp": "mixed precision of every party's forward compute: none or bf16 (cut tensors still cross as float32)",
    "deterministic": "deterministic algorithms on every party (torch.use_deterministic_algorithms); on CUDA each "
    "process needs CUBLAS_WORKSPACE_CONFIG=:4096:8 in its environment",
    "max_train_samples": "use a deterministic subset of this many training samples (quick runs, tests)",
    "max_test_samples": "evaluate on a deterministic subset of this many test samples",
    "eval_batch_size": "batch size for evaluation passes",
    "client_timeout": "seconds to wait for a client's next message before it counts as dropped",
    "connect_timeout": "seconds to wait for all participants to connect at the start of a run "
    "(default: client_timeout)",
    "rejoin_timeout": "seconds a disconnected client has to reconnect at its next turn before it sits out that round",
    "phase_timeout": "seconds one client's train or eval pass may take at most before it is dropped from the round "
    "(a pass also ends at its shard's number of batches; this bounds one that drips steps)",
    "aggregation": "paradigms that average client segments (splitfed_v1, splitfed_v2, fedavg, multitask): fedavg "
    "(default; weighted by the samples the server counted), median or trimmed_mean (coordinate-wise, unweighted: "
    "robust to a client sending poisoned weights); refused by paradigms that do not average",
    "trim_fraction": "aggregation: trimmed_mean: share of the largest and of the smallest values dropped per "
    "coordinate, in [0, 0.5) (default 0.2); refused with any other aggregation",
    "torch_threads": "torch intra-op threads per process (0 = leave torch's default)",
    "backend": "how `slperf federation`/`slperf bench` run it: federation (server and client daemons as processes "
    "over mutual TLS) or sim (every party in one process over in-memory links; same bytes, see docs/simulation.md)",
    "attacks": "attacks of an honest-but-curious server to run and record each round (docs/threat_model.md): dcor, "
    "inversion_whitebox, inversion_learned[:F] (F: share of the public test split it knows, default 0.1), "
    "label_leak; each is refused where the paradigm's threat model rules it out; empty: none",
    "defenses": "client-side defenses and their parameters (docs/threat_model.md, Defenses), e.g. {nopeek: {alpha: "
    "0.5}, activation_noise: {clip: 1.0, sigma: 0.5, delta: 1e-5}, label_dp: {epsilon: 2.0}, grad_perturb: {kind: "
    "max_norm}}; each is refused where the paradigm's threat model leaves it nothing to protect; empty: none",
    "compress": "codec of the cut tensors per direction, e.g. {up: int8, down: fp16}: none (default), fp16, bf16, "
    "int8 (affine, per tensor), int8:channel (per channel), topk:F (the F share of largest magnitudes), topk:F:ef "
    "(with error feedback); up = what clients send, down = the server's replies; refused by paradigms without cut",
    "network": "shaped links for the client daemons, e.g. {rate_mbit: 100, delay_ms: 25} (one-way delay each "
    "direction), optionally with clients: {ID: {rate_mbit, delay_ms}}: the launcher (slperf federation, slperf bench) "
    "runs each client daemon in a network namespace of its own behind tc tbf and a delay relay (Linux, root); a "
    "server started by hand refuses it (it cannot shape its clients' links); empty: loopback, unshaped",
    "client_image": "a local federation (slperf federation, slperf bench) runs each client daemon in its own container "
    "of this image (e.g. slperf:latest, deploy/Dockerfile) through the Docker engine of DOCKER_HOST, with its own "
    "network and data volume (docs/containers.md); default: host processes",
    "client_resources": "limits of each client's container, e.g. {cpus: 0.5, memory_mb: 768}, for every client or per "
    "client ({per_client: {c3: {}}}: c3 unlimited); needs client_image",
    "fed_server": "{address: HOST:PORT}: SplitFed's separate aggregator (`slperf fedserver`; docs/protocol.md "
    "section 11): the clients FedAvg their bottoms there and the server never receives them; only paradigms "
    "that support it (splitfed_v1, splitfed_v2), federation backend only; empty: the server averages",
    "options": "paradigm-specific keys, validated by the paradigm (may also be given at the top level)",
}

# SLPerf spelling -> canonical key.
ALIASES: dict[str, str] = {
    "variants_type": "paradigm",
    "dataDir": "data_dir",
    "client_number": "clients",
    "rounds": "epochs",
}

# SLPerf keys that mean nothing here (MPI ranks, log paths, download flags); accepted and reported.
IGNORED_SLPERF_KEYS = frozenset(
    {
        "log_step",
        "server_rank",
        "max_rank",
        "gpu_num_per_server",
        "gpu_server_num",
        "log_save_path",
        "model_save_path",
        "model_tmp_path",
        "save_acts_step",
        "save_attack_acts_step",
        "save_model_epoch",
        "wd",
        "comm_round",
        "frequency_of_the_test",
        "optimizer",
        "train",
        "SGLR_splitLR",
    }
)

_HINTS = get_type_hints(RunConfig)
_FIELD_NAMES = [f.name for f in fields(RunConfig)]
# Every key the core itself accepts (fields and SLPerf aliases); a paradigm declares the rest.
CORE_KEYS = frozenset(_FIELD_NAMES) | frozenset(ALIASES)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks one value against its declared type; ints are accepted for floats, nothing else is coerced."""
    text = str(hint)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be empty (expected {_type_name(hint)})")
    if "list[int]" in text:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise ConfigError(f"config key '{key}' must be a list of positive integers, got {value!r}")
        return list(value)
    if text.startswith("list") or "list[" in text:
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
            raise ConfigError(f"config key '{key}' must be a list of ids, got {value!r}")
        return [str(v) for v in value]
    if text.startswith("dict"):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return dict(value)
    if "bool" in text:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if "int" in text and "float" not in text:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if "float" in text:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if "str" in text:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    return value


def check_ranges(cfg: RunConfig, datasets: Collection[str]) -> None:
    """Checks the values against each other and their ranges; datasets: the names a config may use (the data
    layer's registry, passed in so that this module stays below the data layer)."""
    positive = ("clients", "batch_size", "epochs", "eval_batch_size")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise ConfigError(f"config key 'lr' must be > 0, got {cfg.lr}")
    if cfg.partition_alpha <= 0:
        raise ConfigError(f"config key 'partition_alpha' must be > 0, got {cfg.partition_alpha}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"config key 'momentum' must be in [0, 1), got {cfg.momentum}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"config key 'weight_decay' must be >= 0, got {cfg.weight_decay}")
    for key in ("max_train_samples", "max_test_samples"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1 when set, got {value}")
    if cfg.connect_timeout is not None and cfg.connect_timeout <= 0:
        raise ConfigError(f"config key 'connect_timeout' must be > 0 when set, got {cfg.connect_timeout}")
    check_aggregation(cfg)
    for key in ("client_timeout", "rejoin_timeout", "phase_timeout"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {getattr(cfg, key)}")
    if cfg.client_ids is not None:
        if len(cfg.client_ids) != len(set(cfg.client_ids)):
            raise ConfigError("config key 'client_ids' lists an id twice")
        if len(cfg.client_ids) != cfg.clients:
            raise ConfigError(f"config key 'client_ids' has {len(cfg.client_ids)} ids but 'clients' is {cfg.clients}")
    if cfg.data_vertical_list is not None and len(cfg.data_vertical_list) != cfg.clients:
        raise ConfigError(
            f"config key 'data_vertical_list' has {len(cfg.data_vertical_list)} entries for {cfg.clients} clients"
        )
    if cfg.dataset not in datasets:
        raise ConfigError(
            f"config key 'dataset': unknown dataset '{cfg.dataset}' (known: {', '.join(sorted(datasets))})"
        )
    check_device_name("device", cfg.device)
    check_device_name("client_device", cfg.client_device)
    check_backend_name(cfg.backend)
    check_amp_name(cfg.amp)
    compress_codecs(cfg)
    network_spec(cfg)
    fed_server_address(cfg)


def network_spec(cfg: RunConfig) -> NetworkSpec | None:
    """The validated ``network`` key (None: no shaping); shaping needs client daemons as processes of their own."""
    try:
        spec = parse_network(cfg.network, cfg.participant_ids() or [f"c{i + 1}" for i in range(cfg.clients)])
    except NetworkConfigError as exc:
        raise ConfigError(str(exc)) from None
    if spec is not None and cfg.backend == "sim":
        raise ConfigError(
            "config key 'network' needs backend: federation (each client daemon in a network namespace of its own); "
            "a simulation has no links to shape"
        )
    return spec


def fed_server_address(cfg: RunConfig) -> str | None:
    """The fed server's HOST:PORT (``fed_server: {address: ...}``), None without one; ConfigError for another key,
    an address that is not HOST:PORT, or the sim backend (which has no fed server)."""
    if not cfg.fed_server:
        return None
    if cfg.backend == "sim":
        raise ConfigError(
            "config key 'fed_server' needs the federation backend: the sim backend runs every party in one process "
            "and starts no fed server (drop fed_server, or run without backend: sim / --backend sim)"
        )
    if cfg.network or cfg.client_image is not None:
        raise ConfigError(
            "config key 'fed_server' is not combined with network or client_image yet: the local federation starts "
            "the fed server on the host's loopback, which clients in network namespaces or containers cannot reach"
        )
    unknown = sorted(str(k) for k in cfg.fed_server if k != "address")
    if unknown:
        raise ConfigError(f"config key 'fed_server' takes address only, not {', '.join(unknown)}")
    address = cfg.fed_server.get("address")
    host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"config key 'fed_server.address' must be HOST:PORT, got {address!r}")
    return str(address)


COMPRESS_DIRECTIONS = ("up", "down")


def compress_codecs(cfg: RunConfig) -> tuple[Codec, Codec]:
    """The (up, down) codecs of ``compress`` (none where a direction is not named); ConfigError for another key
    or an unknown codec name."""
    unknown = sorted(str(k) for k in cfg.compress if k not in COMPRESS_DIRECTIONS)
    if unknown:
        raise ConfigError(f"config key 'compress' takes the directions up and down, not {', '.join(unknown)}")
    try:
        up, down = (parse_codec(cfg.compress.get(d, "none"), f"compress.{d}") for d in COMPRESS_DIRECTIONS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return up, down


AGGREGATIONS = ("fedavg", "median", "trimmed_mean")
DEFAULT_TRIM_FRACTION = 0.2


def check_aggregation(cfg: RunConfig) -> None:
    """``aggregation`` and ``trim_fraction`` against each other; whether the paradigm averages at all is checked
    where the paradigm is known (config_loader.py)."""
    if cfg.aggregation is not None and cfg.aggregation not in AGGREGATIONS:
        raise ConfigError(f"config key 'aggregation' must be one of {', '.join(AGGREGATIONS)}, got {cfg.aggregation!r}")
    if cfg.trim_fraction is not None:
        if cfg.aggregation != "trimmed_mean":
            raise ConfigError(
                "config key 'trim_fraction' applies to aggregation: trimmed_mean only "
                f"(aggregation is {cfg.aggregation or 'fedavg'})"
            )
        if not 0 <= cfg.trim_fraction < 0.5:
            raise ConfigError(f"config key 'trim_fraction' must be in [0, 0.5), got {cfg.trim_fraction}")


_DEVICE_NAME = re.compile(r"^(cpu|cuda(:\d+)?)$")
AMP_CHOICES = ("none", "bf16")


def check_device_name(key: str, name: str) -> None:
    """The spelling of a device (``cpu``, ``cuda``, ``cuda:N``), not whether this machine has it: a config is
    checked on machines that will not run it (the operator's laptop, a CPU client of a GPU server); each party
    resolves its own device when it sets up (``slperf.common.devices``)."""
    if not _DEVICE_NAME.match(name):
        raise ConfigError(f"config key '{key}' must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")


BACKENDS = ("federation", "sim")


def check_backend_name(value: str) -> None:
    if value not in BACKENDS:
        raise ConfigError(f"config key 'backend' must be one of {', '.join(BACKENDS)}, got {value!r}")


def check_amp_name(value: str) -> None:
    if value == "fp16":
        raise ConfigError(
            "config key 'amp': fp16 is not supported: it needs loss scaling on the party that computes the loss "
            "and the same scale on every party its gradient crosses to, which the cut protocol does not carry; "
            "use amp: bf16 (float32's range, no scaling needed; CPUs and recent GPUs)"
        )
    if value not in AMP_CHOICES:
        raise ConfigError(f"config key 'amp' must be one of {', '.join(AMP_CHOICES)}, got {value!r}")


def parse_core_keys(raw: Mapping[str, Any], *, source: str = "config") -> tuple[RunConfig, dict[str, Any], list[str]]:
    """The core keys of a config mapping, type-checked into a RunConfig; returns it with the keys the core does
    not know (for the paradigm to claim, see config_loader.py) and warnings (ignored SLPerf keys)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    warnings: list[str] = []
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: config keys must be strings, got {key!r}")
        canonical = ALIASES.get(key, key)
        if canonical in values:
            raise ConfigError(f"{source}: key '{key}' given twice (directly and through an alias)")
        if key == "device" and value == "gpu":  # SLPerf's shipped value, which its own code ignores
            warnings.append(
                "ignoring SLPerf's 'device: gpu' (SLPerf's code ignores it too): the server computes on cpu; "
                "give device: cuda to compute on a GPU"
            )
        elif canonical in _HINTS:
            values[canonical] = _coerce(key, value, _HINTS[canonical])
        elif key in IGNORED_SLPERF_KEYS:
            warnings.append(f"ignoring SLPerf key '{key}' (it has no meaning in a gRPC federation)")
        else:
            extra[key] = value
    return RunConfig(**values), extra, warnings


def describe_defaults() -> str:
    """The documented defaults, as YAML with comments (used by `slperf config defaults`)."""
    lines = []
    for name in _FIELD_NAMES:
        default = getattr(RunConfig(), name)
        lines.append(f"# {FIELD_DOCS[name]}")
        lines.append(yaml.safe_dump({name: default}, default_flow_style=True).strip().strip("{}"))
    return "\n".join(lines) + "\n"
