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
_NOT_PLUGINS = frozenset({"base", "registry"})  # the API and this module; the kit is a subpackage


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
        raise ConfigError(f"unknown paradigm '{name}' (known: {', '.join(sorted(_SPECS))}; SLPerf aliases: {', '.join(sorted(_ALIASES))})")
    return _SPECS[key]


def all_specs() -> list[ParadigmSpec]:
    _load_all()
    return [_SPECS[k] for k in sorted(_SPECS)]


def variant_names() -> list[str]:
    """Every name that selects a distinct configuration: each paradigm's name, followed by one alias for
    each distinct set of options its aliases imply (the first listed in ``alias_options``: ``psl_sum``, not
    its SLPerf twin ``asy_vanilla2``). What a benchmark runs for "all paradigms"."""
    names: list[str] = []
    for spec in all_specs():
        names.append(spec.name)
        seen: list[dict] = []
        for alias, implied in spec.alias_options.items():
            if dict(implied) not in seen:
                seen.append(dict(implied))
                names.append(alias)
    return names

