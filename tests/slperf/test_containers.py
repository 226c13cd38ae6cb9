"""The container launcher's parts that need no engine: the compute figures read from a daemon's metrics text, and
the clear refusal when no Docker engine answers (the end-to-end run is tests/deploy/test_container_clients.py)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from slperf.common.client_resources import ClientResources
from slperf.common.protocol.types import Phase
from slperf.containers import ContainerClients, ContainerError, parse_client_metrics
from slperf.slclient.metrics import ClientMetrics


def test_compute_figures_come_from_the_daemons_own_metrics():
    metrics = ClientMetrics("c1")
    clock = metrics.pass_started(0, Phase.TRAIN)
    clock.link_call(0)
    clock.link_done()
    metrics.pass_ended(Phase.TRAIN, clock, steps=4)
    text = generate_latest(metrics.registry).decode()
    figures = parse_client_metrics(text)
    assert figures.train_steps == 4 and figures.eval_steps == 0
    assert figures.train_core_share == pytest.approx(figures.train_cpu_seconds / figures.train_seconds)
    assert figures.train_seconds >= 0 and figures.train_ms_per_batch == pytest.approx(1000 * figures.train_seconds / 4)


def test_metrics_text_without_the_figures_counts_nothing():
    figures = parse_client_metrics('# HELP x\nslperf_client_bytes_total{direction="up"} 5\nnot a metric\n')
    assert (figures.train_seconds, figures.train_steps, figures.train_ms_per_batch) == (0.0, 0, None)


def test_no_engine_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    clients = ContainerClients("slperf:latest", {"c1": ClientResources()}, tmp_path, tmp_path)
    try:
        with pytest.raises(ContainerError, match=r"needs a Docker engine, and none answers at unix://.*none\.sock"):
            clients.open()
    finally:
        clients.close()


class _Item:
    def __init__(self, kind: str, name: str, labels: dict[str, str], removed: list[str]):
        self.name, self._kind, self._removed = name, kind, removed
        self.attrs = {"Config": {"Labels": labels}} if kind == "container" else {"Labels": labels}

    def remove(self, **_: object) -> None:
        self._removed.append(f"{self._kind}:{self.name}")


class _Collection:
    def __init__(self, items: list[_Item]):
        self.items = items

    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[_Item]:
        key, _, value = (filters or {}).get("label", "").partition("=")
        labels = [(i, i.attrs.get("Labels") or i.attrs.get("Config", {}).get("Labels") or {}) for i in self.items]
        return [i for i, lab in labels if key in lab and (not value or lab[key] == value)]


def test_the_sweep_removes_only_what_dead_launchers_on_this_host_left():
    import socket
    import subprocess
    import sys

    from slperf.containers import LABEL_OWNER, LABEL_RUN, sweep_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (reaped)
    host = socket.gethostname()
    removed: list[str] = []
    owners = {
        "gone": f"{host}:{dead.pid}",
        "live": f"{host}:{os.getpid()}",
        "elsewhere": f"another-host:{dead.pid}",
    }

    def items(kind: str) -> list[_Item]:
        return [
            _Item(kind, f"{run}-{kind}", {LABEL_RUN: run, LABEL_OWNER: owner}, removed) for run, owner in owners.items()
        ]

    engine = SimpleNamespace(
        containers=_Collection(items("container")),
        networks=_Collection(items("network")),
        volumes=_Collection(items("volume")),
    )
    assert sweep_stale(engine) == ["gone"]
    assert removed == ["container:gone-container", "network:gone-network", "volume:gone-volume"]
