"""Reading a run config (file, YAML text, the server's JSON, or a mapping) and resolving it against the
registered paradigms and data sets.

`RunConfig` and the checks of its core keys live in config.py, below the paradigms and the data layer. This
module is above both: it hands the keys the core does not know to the selected paradigm (which declares its
own options), merges the paradigm's alias options, and checks the data set name against the data registry.
Every caller that turns text into a RunConfig goes through here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from slperf.common.client_resources import check_client_containers
from slperf.common.config import (
    COMPRESS_DIRECTIONS,
    CORE_KEYS,
    ConfigError,
    RunConfig,
    check_ranges,
    compress_codecs,
    parse_core_keys,
)
from slperf.common.data import DATASETS
from slperf.common.models import MODELS
from slperf.common.paradigms import registry
from slperf.common.paradigms.base import ParadigmSpec


def _owner_of(key: str, chosen: str) -> str | None:
    """The paradigm other than ``chosen`` that declares option ``key`` (SLPerf's file carries every paradigm's keys
    at once), or None when no paradigm does."""
    for other in registry.all_specs():
        if other.name != chosen and key in other.option_keys():
            return other.name
    return None


def _multitask_dataset(raw: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """SLPerf's multi-task config lists the tasks' data sets in ``dataset``; that list is ``task_datasets`` here
    (the canonical key, which wins no argument: giving both is an error), and ``dataset`` becomes its first."""
    given = raw.get("dataset")
    if not isinstance(given, list):
        return raw
    if "task_datasets" in raw:
        raise ConfigError(f"{source}: 'dataset' is a list and 'task_datasets' is given too; give the list once")
    if not given or not all(isinstance(name, str) for name in given):
        raise ConfigError(f"{source}: config key 'dataset' as a list must name one data set per task, got {given!r}")
    return {**raw, "dataset": given[0], "task_datasets": list(given)}


def config_from_mapping(raw: Mapping[str, Any], *, source: str = "config") -> tuple[RunConfig, list[str]]:
    """Builds a validated RunConfig; returns it with warnings (ignored SLPerf keys).

    Keys not known to the core are offered to the selected paradigm. One that another paradigm declares (SLPerf's
    shipped file carries every paradigm's keys) is ignored with a warning naming that paradigm; one that no
    paradigm declares is an error naming the key.
    """
    if isinstance(raw, Mapping):
        raw = _multitask_dataset(raw, source)
    cfg, extra, warnings = parse_core_keys(raw, source=source)
    spec = registry.get(cfg.paradigm)  # raises ConfigError for an unknown paradigm
    named = cfg.paradigm  # an alias may imply options; a config must not contradict them
    merged_options = {**spec.alias_options.get(named, {}), **cfg.options}
    cfg.paradigm = spec.name
    for key, value in extra.items():
        if key not in spec.option_keys():
            owner = _owner_of(key, spec.name)
            if owner is not None:
                warnings.append(f"ignoring '{key}': it is an option of the {owner} paradigm, not of {spec.name}")
                continue
            known = sorted(CORE_KEYS | set(spec.option_keys()))
            raise ConfigError(f"{source}: unknown config key '{key}' (known keys: {', '.join(known)})")
        merged_options[spec.canonical_option(key)] = value
    if cfg.data_vertical_list is not None and spec.name != "vertical":
        warnings.append(f"ignoring 'data_vertical_list': it belongs to the vertical paradigm, not to {spec.name}")
        cfg.data_vertical_list = None
    if cfg.model not in MODELS and cfg.model.lower() in MODELS:  # SLPerf writes LeNet, ResNet56
        cfg.model = cfg.model.lower()
    cfg.options = spec.validate_options(merged_options, alias=named)
    if not spec.averages:
        for key in ("aggregation", "trim_fraction"):
            if getattr(cfg, key) is not None:
                raise ConfigError(
                    f"{source}: config key '{key}' applies to paradigms that average client segments "
                    f"({', '.join(registry.averaging())}); {spec.name} averages none"
                )
    check_ranges(cfg, DATASETS)
    if cfg.fed_server and spec.fed_server_threats is None:
        supported = ", ".join(s.name for s in registry.all_specs() if s.fed_server_threats is not None)
        raise ConfigError(
            f"{source}: config key 'fed_server' applies to paradigms with a separate fed server ({supported}); "
            f"{spec.name} has none"
        )
    if cfg.attacks:
        from slperf.common.privacy.observer import check_attacks

        check_attacks(cfg)
    if cfg.defenses:
        from slperf.common.privacy.defenses.check import check_defenses

        check_defenses(cfg)
    _check_compressible(cfg, spec, source)
    check_client_containers(cfg)
    return cfg, warnings


def _check_compressible(cfg: RunConfig, spec: ParadigmSpec, source: str) -> None:
    """A ``compress`` codec must have a float32 cut tensor to act on in its direction; a paradigm without one
    (fedavg: nothing crosses a cut) refuses it rather than accept it and do nothing."""
    for direction, codec in zip(COMPRESS_DIRECTIONS, compress_codecs(cfg), strict=True):
        if not codec.compressed:
            continue
        exchange = spec.exchange(cfg, 0)
        stages = exchange.train + exchange.eval
        specs = [s.up if direction == "up" else s.down for s in stages]
        if not any(t is not None and t.codec.compressed for t in specs):
            raise ConfigError(
                f"{source}: config key 'compress.{direction}': {spec.name} sends no float32 cut tensor "
                f"{direction} to compress"
            )


# Bounds on a config's text, far above any real config (a few KiB, a few levels, a few hundred values) and far
# below what costs a server anything: a 352-byte alias bomb expands to gigabytes when walked, thousands of levels
# overflow the parser's recursion, and a 5 000-digit integer makes int() refuse.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_NODES = 100_000  # values counted with every alias expanded
MAX_INT_DIGITS = 100


class _BoundedLoader(yaml.SafeLoader):
    """yaml's safe loader with the nesting depth and the expanded size of the document bounded while it is
    composed (before anything is constructed), and integers of bounded length."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"nested more than {MAX_CONFIG_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> Any:
        digits = str(node.value).lstrip("+-").replace("_", "")
        if len(digits) > MAX_INT_DIGITS:
            raise ConfigError(f"an integer of {len(digits)} digits at line {node.start_mark.line + 1}")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias expanded; each distinct node is counted once
    (memoised), so this is fast for exactly the documents whose expansion is huge."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a recursive alias counts once, not forever
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, memo) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def _bounded_yaml(text: str) -> Any:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{len(text)} characters; a config may have at most {MAX_CONFIG_BYTES}")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{size} values once its aliases are expanded; a config may have at most {MAX_CONFIG_NODES}"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_config_text(text: str, *, source: str = "config") -> tuple[RunConfig, list[str]]:
    """Parses and validates a config's YAML text. Bounded in size, depth, alias expansion and integer length;
    whatever is wrong is a ConfigError naming it (the server answers INVALID_ARGUMENT)."""
    try:
        raw = _bounded_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{source}: refused: {exc}") from None
    except (RecursionError, ValueError) as exc:
        raise ConfigError(f"{source}: not a usable YAML document: {type(exc).__name__}: {str(exc)[:200]}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    return config_from_mapping(raw, source=source)


def load_config(path: str | Path) -> tuple[RunConfig, list[str]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    return load_config_text(text, source=str(path))


def config_from_json(text: str) -> RunConfig:
    """Parses the resolved config a server sends in RunSetup, with the same validation as a file."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run config is not valid JSON: {exc}") from None
    cfg, _ = config_from_mapping(raw, source="run config")
    return cfg
