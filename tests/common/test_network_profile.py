"""The ``network:`` run-config key: what it accepts, and that every malformed value is refused naming the key."""

from __future__ import annotations

import pytest

from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_mapping
from slperf.common.network_profile import LinkProfile, parse_network


def _config(network, **extra):
    return config_from_mapping({"clients": 2, "network": network, **extra})[0]


def test_a_global_profile_applies_to_every_client():
    spec = parse_network({"rate_mbit": 100, "delay_ms": 25}, ["c1", "c2"])
    assert spec is not None
    assert spec.for_client("c1") == spec.for_client("c2") == LinkProfile(rate_mbit=100.0, delay_ms=25.0)
    assert spec.label == "100Mbit-25ms"
    assert spec.default.rate_bytes_per_s == 12.5e6


def test_per_client_profiles_override_the_default_and_a_name_labels_it():
    spec = parse_network(
        {"name": "wan", "rate_mbit": 100, "delay_ms": 25, "clients": {"c2": {"rate_mbit": 10}}}, ["c1", "c2"]
    )
    assert spec is not None
    assert spec.for_client("c1").rate_mbit == 100 and spec.for_client("c2") == LinkProfile(10.0, 0.0)
    assert spec.label == "wan"


def test_empty_means_unshaped_and_the_config_accepts_it():
    assert parse_network({}, ["c1"]) is None
    assert _config({}).network == {}
    assert _config({"rate_mbit": 10, "delay_ms": 50}).network == {"rate_mbit": 10, "delay_ms": 50}


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"rate": 10}, "unknown key(s) rate"),
        ({"rate_mbit": 10, "jitter_ms": 1}, "unknown key(s) jitter_ms"),
        ({"name": "x"}, "needs rate_mbit and/or delay_ms"),
        ({"rate_mbit": 0}, "'network.rate_mbit' must be > 0"),
        ({"rate_mbit": -5}, "'network.rate_mbit' must be > 0"),
        ({"rate_mbit": True}, "'network.rate_mbit' must be a number"),
        ({"rate_mbit": "100M"}, "'network.rate_mbit' must be a number"),
        ({"delay_ms": -1}, "'network.delay_ms' must be >= 0"),
        ({"delay_ms": float("nan")}, "'network.delay_ms' must be a number"),
        ({"delay_ms": 1e9}, "<= 10000"),
        ({"rate_mbit": 10, "name": "a b"}, "'network.name' must be a word"),
        ({"rate_mbit": 10, "clients": ["c1"]}, "'network.clients' must map client ids"),
        ({"rate_mbit": 10, "clients": {"c9": {"rate_mbit": 1}}}, "names c9, not among the run's clients (c1, c2)"),
        ({"rate_mbit": 10, "clients": {"c1": {"name": "x", "rate_mbit": 1}}}, "network.clients.c1': unknown key"),
        ({"rate_mbit": 10, "clients": {"c1": 5}}, "'network.clients.c1' must be a mapping"),
        ([10], "'network' must be a mapping"),
    ],
)
def test_malformed_values_are_refused_naming_the_key(network, message):
    with pytest.raises(ConfigError) as err:
        _config(network)
    assert message in str(err.value)


def test_per_client_ids_are_checked_against_explicit_client_ids():
    cfg = _config({"delay_ms": 5, "clients": {"alice": {"rate_mbit": 1}}}, client_ids=["alice", "bob"])
    assert cfg.network["clients"] == {"alice": {"rate_mbit": 1}}


def test_a_simulation_refuses_it_it_has_no_links():
    with pytest.raises(ConfigError, match="needs backend: federation"):
        _config({"rate_mbit": 10}, backend="sim")
