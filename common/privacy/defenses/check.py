"""The config check of ``defenses:``: every name known, every parameter valid, every defense one the paradigm's
threat model leaves something for it to protect. Run at config load (``config_loader``); it replaces the mapping
with the resolved parameters (defaults filled in), which is what the run folder and its figures record."""

from __future__ import annotations

from collections.abc import Mapping

from slperf.common.config import ConfigError, RunConfig
from slperf.common.paradigms import registry as paradigms
from slperf.common.privacy.defenses import registry


def check_defenses(config: RunConfig) -> None:
    threats = paradigms.get(config.paradigm).threats
    resolved: dict[str, dict[str, object]] = {}
    for name, raw in config.defenses.items():
        defense = registry.get(str(name))
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"config key 'defenses.{name}' must be a mapping of its parameters, got {type(raw).__name__}"
            )
        params = defense.parse(raw)
        why = defense.refusal(threats)
        if why:
            raise ConfigError(f"config key 'defenses': {name} does not apply to {config.paradigm}: {why}")
        resolved[str(name)] = params
    config.defenses = resolved
