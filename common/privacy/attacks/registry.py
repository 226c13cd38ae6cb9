"""Finds attacks by name. Every plain module of this package other than the API (``base``) and this registry is an
attack plug-in that calls ``register``, as paradigms do; a run asks for them with ``attacks: [name, ...]``, an attack
that takes a parameter as ``name:PARAMETER`` (``inversion_learned:0.1``)."""

from __future__ import annotations

import importlib
import pkgutil

from slperf.common.config import ConfigError
from slperf.common.privacy.attacks.base import Attack

_ATTACKS: dict[str, type[Attack]] = {}
_loaded = False
_NOT_PLUGINS = frozenset({"base", "registry"})


def register(attack: type[Attack]) -> type[Attack]:
    if attack.name in _ATTACKS and _ATTACKS[attack.name] is not attack:
        raise ValueError(f"attack '{attack.name}' registered twice")
    _ATTACKS[attack.name] = attack
    return attack


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import slperf.common.privacy.attacks as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg and info.name not in _NOT_PLUGINS and not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def split(spec: str) -> tuple[str, str | None]:
    """``name`` or ``name:PARAMETER`` -> (name, parameter or None)."""
    name, sep, parameter = spec.partition(":")
    return name, (parameter if sep else None)


def get(spec: str) -> type[Attack]:
    """The attack named by ``spec`` (``name`` or ``name:PARAMETER``; the parameter is not checked here)."""
    _load_all()
    name = split(spec)[0]
    if name not in _ATTACKS:
        raise ConfigError(f"unknown attack '{name}' (known: {', '.join(sorted(_ATTACKS))})")
    return _ATTACKS[name]


def all_attacks() -> list[type[Attack]]:
    _load_all()
    return [_ATTACKS[k] for k in sorted(_ATTACKS)]
