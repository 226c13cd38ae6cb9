"""Command construction of the shaping helpers (no root needed): the tbf parameters for a rate, the measured
transfer's size, the namespace names the sweep recognises."""

from __future__ import annotations

import os

import pytest

from slperf.common.network_profile import LinkProfile
from slperf.netshape import namespaces
from slperf.netshape.clients import MAX_MEASURE_BYTES, MIN_MEASURE_BYTES, measure_bytes
from slperf.netshape.shaping import MIN_BURST_BYTES, Tbf
from slperf.netshape.topology import Topology


def test_tbf_command_for_a_wan_link():
    tbf = Tbf(100)
    assert tbf.command("ns1", "eth0") == [
        "tc", "-n", "ns1", "qdisc", "replace", "dev", "eth0", "root", "tbf",
        "rate", "100000000bit", "burst", "50000", "limit", "1250000",
    ]  # fmt: skip


def test_tbf_bucket_and_queue_scale_with_the_rate_within_bounds():
    slow, lan = Tbf(1), Tbf(1000)
    assert slow.burst_bytes == MIN_BURST_BYTES and slow.limit_bytes == 3 * MIN_BURST_BYTES
    assert lan.burst_bytes == 500_000 and lan.limit_bytes == 12_500_000
    assert Tbf(0.5).command("n", "p1")[10] == "500000bit"


@pytest.mark.parametrize("rate", [0, -1])
def test_tbf_refuses_a_rate_that_is_not_positive(rate):
    with pytest.raises(ValueError, match="must be > 0"):
        Tbf(rate)


def test_the_measured_transfer_lasts_about_a_second_within_bounds():
    assert measure_bytes(LinkProfile(rate_mbit=10)) == 1_250_000
    assert measure_bytes(LinkProfile(rate_mbit=0.1)) == MIN_MEASURE_BYTES
    assert measure_bytes(LinkProfile(rate_mbit=10_000)) == MAX_MEASURE_BYTES
    assert measure_bytes(LinkProfile(delay_ms=5)) == MAX_MEASURE_BYTES  # unlimited rate


def test_topology_names_carry_the_owner_pid_for_the_sweep():
    topo = Topology(["gateway", "c1"])
    for name in (topo.switch, topo.ns("gateway"), topo.ns("c1")):
        match = namespaces._NAME.match(name)
        assert match and int(match.group(1)) == os.getpid(), name
    assert topo.address("gateway").endswith(".1") and topo.address("c1").endswith(".2")
    assert topo.cmd("c1", ["true"]) == ["ip", "netns", "exec", topo.ns("c1"), "true"]


def test_preflight_refuses_clearly_without_root(monkeypatch):
    monkeypatch.setattr(namespaces.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(namespaces.sys, "platform", "linux")
    with pytest.raises(namespaces.NetnsUnavailable, match="need root"):
        namespaces.preflight()


def test_preflight_names_the_missing_tool(monkeypatch):
    monkeypatch.setattr(namespaces.os, "geteuid", lambda: 0)
    monkeypatch.setattr(namespaces.sys, "platform", "linux")
    monkeypatch.setattr(namespaces.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/ip")
    with pytest.raises(namespaces.NetnsUnavailable, match="tc \\(iproute2\\) not installed"):
        namespaces.preflight(need_tc=True)


def test_sweep_deletes_only_namespaces_of_dead_owners(monkeypatch):
    dead, live = 2**22 + 7, os.getpid()
    names = [f"slpn-{dead}-abc123-0", f"slpn-{live}-abc123-0", "slnf-abc-0", "other"]
    deleted: list[str] = []
    monkeypatch.setattr(namespaces, "listed", lambda: names)
    monkeypatch.setattr(namespaces, "delete", deleted.append)
    monkeypatch.setattr(namespaces, "_alive", lambda pid: pid == live)
    assert namespaces.sweep_leftovers() == [f"slpn-{dead}-abc123-0"] == deleted
