"""One registry shape for the privacy plug-ins (attacks and defenses): every plain module of a package, other than
the ones it names as its own machinery, is a plug-in that calls ``register`` when imported; the package is
imported on the first lookup, so adding a plug-in is adding a module and touches no core file."""

from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar, Generic, Protocol, TypeVar

from slperf.common.config import ConfigError


class Named(Protocol):
    name: ClassVar[str]


P = TypeVar("P", bound=Named)


class PluginRegistry(Generic[P]):
    def __init__(self, kind: str, package: str, not_plugins: frozenset[str], unknown_prefix: str = ""):
        self.kind = kind  # "attack", "defense": in error messages
        self._package = package
        self._not_plugins = not_plugins | {"registry"}
        self._unknown_prefix = unknown_prefix  # e.g. "config key 'defenses': "
        self._plugins: dict[str, type[P]] = {}
        self._loaded = False

    def register(self, plugin: type[P]) -> type[P]:
        if plugin.name in self._plugins and self._plugins[plugin.name] is not plugin:
            raise ValueError(f"{self.kind} '{plugin.name}' registered twice")
        self._plugins[plugin.name] = plugin
        return plugin

    def _load_all(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.ispkg and info.name not in self._not_plugins and not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")

    def get(self, name: str) -> type[P]:
        self._load_all()
        if name not in self._plugins:
            known = ", ".join(sorted(self._plugins))
            raise ConfigError(f"{self._unknown_prefix}unknown {self.kind} '{name}' (known: {known})")
        return self._plugins[name]

    def all(self) -> list[type[P]]:
        self._load_all()
        return [self._plugins[k] for k in sorted(self._plugins)]
