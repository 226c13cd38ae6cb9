"""Finds defenses by name. Every plain module of this package other than the API (``base``), this registry, the
client-side composition (``client``), the accounting and the config check is a defense plug-in that calls
``register``, as attacks do; a run asks for them with ``defenses: {name: {parameter: value}}``."""

from __future__ import annotations

from slperf.common.privacy.defenses.base import Defense
from slperf.common.privacy.plugins import PluginRegistry

_REGISTRY: PluginRegistry[Defense] = PluginRegistry(
    "defense",
    "slperf.common.privacy.defenses",
    frozenset({"base", "client", "accounting", "check"}),
    unknown_prefix="config key 'defenses': ",
)


def register(defense: type[Defense]) -> type[Defense]:
    return _REGISTRY.register(defense)


def get(name: str) -> type[Defense]:
    return _REGISTRY.get(name)


def all_defenses() -> list[type[Defense]]:
    return _REGISTRY.all()
