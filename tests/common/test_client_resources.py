"""``client_image`` / ``client_resources``: every client's limits from the default and its own entry; unknown keys,
bad values, strangers and limits that nothing would apply are refused with the key named."""

from __future__ import annotations

import pytest

from slperf.common.client_resources import ClientResources, client_resources
from slperf.common.config import ConfigError
from slperf.common.config_loader import config_from_mapping


def _config(**keys):
    return config_from_mapping({"paradigm": "splitfed_v1", "clients": 3, **keys})[0]


def test_default_for_every_client_and_a_per_client_entry_replaces_it():
    cfg = _config(
        client_image="slperf:latest",
        client_resources={"cpus": 0.5, "memory_mb": 768, "per_client": {"c3": {}, "c2": {"cpus": 2}}},
    )
    limits = client_resources(cfg)
    assert limits == {
        "c1": ClientResources(cpus=0.5, memory_mb=768),
        "c2": ClientResources(cpus=2.0, memory_mb=None),
        "c3": ClientResources(),
    }
    assert limits["c1"].nano_cpus == 500_000_000 and not limits["c3"].limited
    assert limits["c1"].describe() == "0.5 cpus, 768 MiB" and limits["c3"].describe() == "unlimited"


def test_explicit_client_ids_are_the_ids_per_client_may_name():
    cfg = _config(client_ids=["a", "b", "c"], client_image="x", client_resources={"per_client": {"b": {"cpus": 1}}})
    assert client_resources(cfg)["b"].cpus == 1.0 and client_resources(cfg)["a"] == ClientResources()
    with pytest.raises(ConfigError, match="names c1, not a client of this run"):
        _config(client_ids=["a", "b", "c"], client_image="x", client_resources={"per_client": {"c1": {}}})


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": 1}, "takes cpus, memory_mb, not cpu"),
        ({"cpus": 0}, "'client_resources.cpus' must be a number of cores >= 0.01"),
        ({"cpus": "half"}, "'client_resources.cpus' must be a number"),
        ({"cpus": True}, "'client_resources.cpus' must be a number"),
        ({"memory_mb": 1.5}, "'client_resources.memory_mb' must be an integer >= 6"),
        ({"memory_mb": 2}, "'client_resources.memory_mb' must be an integer >= 6"),
        ({"per_client": {"c1": {"disk_mb": 1}}}, "'client_resources.per_client.c1' takes cpus, memory_mb"),
        ({"per_client": {"c1": 0.5}}, "'client_resources.per_client.c1' must be a mapping"),
        ({"per_client": ["c1"]}, "'client_resources.per_client' must map client ids"),
    ],
)
def test_bad_limits_are_refused_naming_the_key(resources, message):
    with pytest.raises(ConfigError, match=message):
        _config(client_image="slperf:latest", client_resources=resources)


def test_limits_without_containers_are_refused():
    with pytest.raises(ConfigError, match="set client_image"):
        _config(client_resources={"cpus": 0.5})


def test_containers_are_refused_by_the_sim_backend_and_need_a_name():
    with pytest.raises(ConfigError, match="backend: sim has none"):
        _config(client_image="slperf:latest", backend="sim")
    with pytest.raises(ConfigError, match="must name an image"):
        _config(client_image=" ")
    with pytest.raises(ConfigError, match="'client_resources' must be a mapping"):
        _config(client_image="slperf:latest", client_resources=0.5)
