"""Finds attacks by name. Every plain module of this package other than the API (``base``) and this registry is an
attack plug-in that calls ``register``, as paradigms do; a run asks for them with ``attacks: [name, ...]``, an attack
that takes a parameter as ``name:PARAMETER`` (``inversion_learned:0.1``)."""

from __future__ import annotations

from slperf.common.privacy.attacks.base import Attack
from slperf.common.privacy.plugins import PluginRegistry

_REGISTRY: PluginRegistry[Attack] = PluginRegistry("attack", "slperf.common.privacy.attacks", frozenset({"base"}))


def register(attack: type[Attack]) -> type[Attack]:
    return _REGISTRY.register(attack)


def split(spec: str) -> tuple[str, str | None]:
    """``name`` or ``name:PARAMETER`` -> (name, parameter or None)."""
    name, sep, parameter = spec.partition(":")
    return name, (parameter if sep else None)


def get(spec: str) -> type[Attack]:
    """The attack named by ``spec`` (``name`` or ``name:PARAMETER``; the parameter is not checked here)."""
    return _REGISTRY.get(split(spec)[0])


def all_attacks() -> list[type[Attack]]:
    return _REGISTRY.all()
