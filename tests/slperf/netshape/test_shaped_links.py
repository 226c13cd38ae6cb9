"""Shaped links for real (root, namespaces): the rate measured over a client's link is the configured one within
a bound, the round trip through its relay carries the delay, a per-client profile gets its own rate, and nothing
(namespace, link, process) is left once the network is closed, also when building it fails halfway."""

from __future__ import annotations

import pytest
from netshape_checks import my_children, my_namespaces, need_namespaces

from slperf.common.network_profile import parse_network
from slperf.netshape import namespaces, shaping
from slperf.netshape.clients import ShapedClients

pytestmark = pytest.mark.slow


def test_a_shaped_link_carries_its_rate_and_delay_and_leaves_nothing(tmp_path):
    need_namespaces()
    spec = parse_network({"rate_mbit": 20, "delay_ms": 10, "clients": {"c2": {"rate_mbit": 5}}}, ["c1", "c2"])
    assert spec is not None
    net = ShapedClients(spec, ["c1", "c2"], tmp_path / "logs")
    try:
        net.build()
        assert "rate 20Mbit" in shaping.show(net.topology.ns("c1"), "eth0")
        links = {m.client: m for m in net.measure()}
    finally:
        net.close()
    c1, c2 = links["c1"], links["c2"]
    for m, rate in ((c1, 20), (c2, 5)):
        # TCP payload over a token bucket: a little under the rate; the bucket's burst can lift it a little over.
        assert 0.75 * rate <= m.up_mbit <= 1.15 * rate, m
        assert 0.75 * rate <= m.down_mbit <= 1.15 * rate, m
        assert m.rtt_link_ms < 10, m  # the link itself adds no delay
    assert 20 <= c1.rtt_path_ms < 80, c1  # 10 ms each way through the relay
    assert c2.rtt_path_ms < 20, c2  # its own profile: no delay
    assert my_namespaces() == [] and net.leftovers() == []
    assert [c for c in my_children() if "slperf" in c] == []


def test_a_failure_while_building_removes_what_was_made(tmp_path, monkeypatch):
    need_namespaces()
    spec = parse_network({"rate_mbit": 10}, ["c1", "c2"])
    assert spec is not None
    net = ShapedClients(spec, ["c1", "c2"], tmp_path / "logs")

    def broken(self, host, rate):
        raise RuntimeError("tc exploded")

    monkeypatch.setattr(type(net.topology), "shape", broken)
    with pytest.raises(RuntimeError, match="tc exploded"):
        net.build()
    assert my_namespaces() == []


def test_the_sweep_removes_a_dead_owners_namespace():
    need_namespaces()
    dead = 2**22 - 3  # above the default pid_max: no process has it
    name = f"{namespaces.PREFIX}-{dead}-abcdef-0"
    namespaces.ip("netns", "add", name)
    try:
        assert name in namespaces.sweep_leftovers()
        assert name not in namespaces.listed()
    finally:
        namespaces.ip("netns", "del", name, check=False)
