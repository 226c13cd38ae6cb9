"""Finds defenses by name. Every plain module of this package other than the API (``base``), this registry, the
client-side composition (``client``), the accounting and the config check is a defense plug-in that calls
``register``, as attacks do; a run asks for them with ``defenses: {name: {parameter: value}}``."""

from __future__ import annotations

import importlib
import pkgutil

from slperf.common.config import ConfigError
from slperf.common.privacy.defenses.base import Defense

_DEFENSES: dict[str, type[Defense]] = {}
_loaded = False
_NOT_PLUGINS = frozenset({"base", "registry", "client", "accounting", "check"})


def register(defense: type[Defense]) -> type[Defense]:
    if defense.name in _DEFENSES and _DEFENSES[defense.name] is not defense:
        raise ValueError(f"defense '{defense.name}' registered twice")
    _DEFENSES[defense.name] = defense
    return defense


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import slperf.common.privacy.defenses as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg and info.name not in _NOT_PLUGINS and not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def get(name: str) -> type[Defense]:
    _load_all()
    if name not in _DEFENSES:
        raise ConfigError(f"config key 'defenses': unknown defense '{name}' (known: {', '.join(sorted(_DEFENSES))})")
    return _DEFENSES[name]


def all_defenses() -> list[type[Defense]]:
    _load_all()
    return [_DEFENSES[k] for k in sorted(_DEFENSES)]
