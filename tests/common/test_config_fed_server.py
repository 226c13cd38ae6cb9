"""The run config's ``fed_server`` key: an address only, for the paradigms that offer a fed server, on the
federation backend only (the sim backend starts no fed server, so it is refused, not ignored)."""

from __future__ import annotations

import pytest
import yaml

from slperf.common.config import ConfigError, fed_server_address
from slperf.common.config_loader import load_config_text

BASE = {"paradigm": "splitfed_v1", "dataset": "mnist", "clients": 2}


def load(**overrides):
    return load_config_text(yaml.safe_dump({**BASE, **overrides}), source="run config")[0]


def test_an_address_is_taken_and_none_without_the_key() -> None:
    assert fed_server_address(load(fed_server={"address": "127.0.0.1:50052"})) == "127.0.0.1:50052"
    assert fed_server_address(load()) is None


@pytest.mark.parametrize(
    ("fed_server", "says"),
    [
        ({"address": "no-port"}, "HOST:PORT"),
        ({"address": "host:99999"}, "HOST:PORT"),
        ({"address": 5}, "HOST:PORT"),
        ({"address": "h:1", "tls": True}, "address only"),
    ],
)
def test_a_bad_fed_server_is_refused_naming_it(fed_server, says) -> None:
    with pytest.raises(ConfigError, match=says):
        load(fed_server=fed_server)


def test_the_sim_backend_refuses_a_fed_server() -> None:
    with pytest.raises(ConfigError, match="needs the federation backend"):
        load(fed_server={"address": "127.0.0.1:0"}, backend="sim")


def test_a_paradigm_without_a_fed_server_refuses_the_key() -> None:
    with pytest.raises(ConfigError, match="splitfed_v1"):
        load(paradigm="vanilla", fed_server={"address": "127.0.0.1:0"})


@pytest.mark.parametrize("launcher", [{"network": {"rate_mbit": 10}}, {"client_image": "slperf:latest"}])
def test_a_fed_server_is_not_combined_with_shaped_links_or_containers(launcher):
    with pytest.raises(ConfigError, match="not combined with network or client_image"):
        load(fed_server={"address": "127.0.0.1:0"}, **launcher)
