"""Finds paradigms by name or SLPerf alias. Every plain module in this package other than the API (``base``)
and this registry is a paradigm plug-in that calls ``register``; what plug-ins share lives in the ``kit``
subpackage, which is never loaded as a plug-in. Third-party paradigms register through the
``slperf.paradigms`` entry-point group. Neither way needs an edit to the server, the client daemon or the CLI."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from slperf.common.config import ConfigError
from slperf.common.paradigms.base import ParadigmSpec

_SPECS: dict[str, ParadigmSpec] = {}
_ALIASES: dict[str, str] = {}
_loaded = False
_NOT_PLUGINS = frozenset({"base", "threats", "registry"})  # the API and this module; the kit is a subpackage


def register(spec: ParadigmSpec) -> ParadigmSpec:
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"paradigm '{spec.name}' registered twice")
    _SPECS[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import slperf.common.paradigms as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg and info.name not in _NOT_PLUGINS and not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    for ep in entry_points(group="slperf.paradigms"):
        ep.load()


def get(name: str) -> ParadigmSpec:
    _load_all()
    key = _ALIASES.get(name, name)
    if key not in _SPECS:
        raise ConfigError(
            f"unknown paradigm '{name}' (known: {', '.join(sorted(_SPECS))}; SLPerf aliases: "
            f"{', '.join(sorted(_ALIASES))})"
        )
    return _SPECS[key]


def all_specs() -> list[ParadigmSpec]:
    _load_all()
    return [_SPECS[k] for k in sorted(_SPECS)]


def variant_of(name: str) -> str:
    """The one name for the configuration ``name`` selects: the paradigm's name for a plain alias, and for an
    alias that implies options the first alias in ``alias_options`` that implies the same (``asy_vanilla2``
    -> ``psl_sum``). A benchmark keys its cells by it, so two names for one configuration run once."""
    spec = get(name)
    implied = dict(spec.alias_options.get(name, {}))
    if not implied:
        return spec.name
    return next(alias for alias, options in spec.alias_options.items() if dict(options) == implied)


def variant_names() -> list[str]:
    """Every name that selects a distinct configuration (see ``variant_of``): each paradigm's name, followed
    by one alias per distinct set of options its aliases imply. What a benchmark runs for "all paradigms"."""
    names: list[str] = []
    for spec in all_specs():
        names.append(spec.name)
        names += [alias for alias in spec.alias_options if variant_of(alias) == alias]
    return names


def averaging() -> list[str]:
    """The paradigms that average client segments (those that accept ``aggregation``)."""
    return sorted(spec.name for spec in all_specs() if spec.averages)
