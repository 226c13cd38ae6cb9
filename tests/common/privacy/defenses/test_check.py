"""``defenses:`` at config load: resolved with its defaults, refused with a clear error for an unknown name, a bad or
unknown parameter, or a defense the paradigm's threat model leaves nothing to protect (saying why)."""

from __future__ import annotations

import json

import pytest

from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_mapping, load_config_text


def load(paradigm: str, defenses: object, **extra: object):
    config, _ = config_from_mapping({"paradigm": paradigm, "defenses": defenses, **extra})
    return config


def test_the_documented_schema_resolves_with_its_defaults_and_round_trips():
    text = """
paradigm: vanilla
defenses:
  nopeek: {alpha: 0.5}
  activation_noise: {clip: 1.0, sigma: 0.5, delta: 1.0e-5}
  label_dp: {epsilon: 2.0}
"""
    config, _ = load_config_text(text, source="test")
    assert config.defenses == {
        "nopeek": {"alpha": 0.5},
        "activation_noise": {"clip": 1.0, "sigma": 0.5, "delta": 1e-5},
        "label_dp": {"epsilon": 2.0},
    }
    assert load("vanilla", {"activation_noise": {"sigma": 1}}).defenses == {
        "activation_noise": {"clip": 1.0, "sigma": 1.0, "delta": 1e-5}
    }
    assert load("ushaped", {"grad_perturb": None}).defenses == {"grad_perturb": {"kind": "max_norm"}}
    again, _ = config_from_mapping(json.loads(config.to_json()))
    assert again.defenses == config.defenses
    assert load("vanilla", {}).defenses == {}


@pytest.mark.parametrize(
    ("paradigm", "defenses", "message"),
    [
        (
            "vanilla",
            {"nope": {}},
            r"unknown defense 'nope' \(known: activation_noise, grad_perturb, label_dp, nopeek\)",
        ),
        ("vanilla", {"nopeek": {}}, r"'defenses.nopeek.alpha' is required"),
        ("vanilla", {"nopeek": {"alpha": -1}}, r"'defenses.nopeek.alpha' must be > 0, got -1"),
        ("vanilla", {"nopeek": {"alpha": "big"}}, r"'defenses.nopeek.alpha' must be a finite number"),
        ("vanilla", {"nopeek": {"alpha": 1, "beta": 2}}, r"unknown parameter 'beta' \(known: alpha\)"),
        ("vanilla", {"activation_noise": {"sigma": 1, "delta": 1}}, r"'defenses.activation_noise.delta' must be in"),
        ("vanilla", {"activation_noise": {"sigma": 0}}, r"'defenses.activation_noise.sigma' must be > 0"),
        ("vanilla", {"label_dp": {"epsilon": True}}, r"'defenses.label_dp.epsilon' must be a finite number"),
        ("ushaped", {"grad_perturb": {"kind": "marvell"}}, r"'defenses.grad_perturb.kind' must be one of max_norm"),
        ("vanilla", {"nopeek": 0.5}, r"'defenses.nopeek' must be a mapping of its parameters, got float"),
        ("vanilla", ["nopeek"], r"config key 'defenses' must be a mapping"),
    ],
)
def test_bad_defenses_are_refused_naming_the_key(paradigm, defenses, message):
    with pytest.raises(ConfigError, match=message):
        load(paradigm, defenses)


@pytest.mark.parametrize(
    ("paradigm", "defense", "why"),
    [
        ("vanilla", {"grad_perturb": {}}, "the server never sees gradients from a tail"),
        ("splitfed_v1", {"grad_perturb": {}}, "the server never sees gradients from a tail"),
        ("ushaped", {"label_dp": {"epsilon": 1}}, "the server never sees labels"),
        ("fedavg", {"nopeek": {"alpha": 1}}, "the server never sees cut activations"),
        ("fedavg", {"activation_noise": {"sigma": 1}}, "the server never sees cut activations"),
    ],
)
def test_a_defense_the_threat_model_leaves_nothing_to_protect_is_refused(paradigm, defense, why):
    with pytest.raises(ConfigError, match=f"{next(iter(defense))} does not apply to {paradigm}: {why}"):
        load(paradigm, defense)


def test_each_defense_applies_where_its_data_leaves_the_client():
    assert load("ushaped", {"nopeek": {"alpha": 1}, "activation_noise": {"sigma": 1}, "grad_perturb": {}}).defenses
    assert load("multitask", {"grad_perturb": {}}, dataset="mnist").defenses
    assert load("psl", {"label_dp": {"epsilon": 1}, "nopeek": {"alpha": 1}}).defenses
