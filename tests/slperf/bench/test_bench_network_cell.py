"""A tiny 2-client bench cell over shaped links, end to end (root, namespaces): the row and the report carry the
network columns measured in the run, and no namespace, link or process is left afterwards; nor when the run fails
after the network was built."""

from __future__ import annotations

import pytest
import yaml
from netshape_checks import my_children, my_namespaces, need_namespaces

from slperf.bench.run import run_suite
from slperf.bench.suite import parse_suite
from slperf.federation import FederationError, FederationHooks, run_federation

pytestmark = pytest.mark.slow

BASE = {
    "model": "lenet",
    "epochs": 1,
    "batch_size": 64,
    "lr": 0.05,
    "max_train_samples": 256,
    "max_test_samples": 128,
    "torch_threads": 1,
}


def test_a_bench_cell_over_shaped_links_reports_its_measured_link(tmp_path):
    need_namespaces()
    suite = parse_suite(
        {
            "name": "net-e2e",
            "base": BASE,
            "matrix": {
                "paradigms": ["vanilla"],
                "clients": [2],
                "networks": [{"name": "wan", "rate_mbit": 40, "delay_ms": 5}],
            },
            "target_accuracy": 0.05,
            "centralized": False,
        }
    )
    outcome = run_suite(suite, tmp_path / "out", show_progress=False, echo=lambda m: None)
    assert outcome.failed == [], outcome.rows
    (row,) = outcome.rows
    assert row["key"] == "vanilla/mnist/homo/c2/s0/net-wan"
    assert row["network"] == "wan" and row["link_rate_mbit"] == 40 and row["link_delay_ms"] == 5
    assert 0.75 * 40 <= row["link_up_mbit"] <= 1.15 * 40, row
    assert 0.75 * 40 <= row["link_down_mbit"] <= 1.15 * 40, row
    assert row["link_rtt_ms"] >= 10, row  # 5 ms each way through the relay
    assert 0 < row["server_busy_fraction"] < 1, row
    assert row["seconds_per_round"] > 0 and row["seconds_to_target"] is not None
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Over shaped links" in text and "| vanilla | wan |" in text
    assert (tmp_path / "out" / "plots" / "network_time_to_accuracy.png").stat().st_size > 0
    assert my_namespaces() == []
    assert [c for c in my_children() if "slperf" in c] == []


def test_a_run_that_fails_after_the_network_was_built_leaves_nothing(tmp_path):
    need_namespaces()
    config = {**BASE, "paradigm": "vanilla", "clients": 2, "network": {"rate_mbit": 50, "delay_ms": 1}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    seen: dict[str, list[str]] = {}

    def fail(federation):
        seen["namespaces"] = my_namespaces()
        raise RuntimeError("injected failure once every daemon runs")

    with pytest.raises((RuntimeError, FederationError), match="injected failure"):
        run_federation(path, tmp_path / "runs", show_progress=False, echo=lambda m: None,
                       hooks=FederationHooks(on_started=fail))  # fmt: skip
    assert len(seen["namespaces"]) == 4  # bridge, gateway, c1, c2 existed while it ran
    assert my_namespaces() == []
    assert [c for c in my_children() if "slperf" in c] == []
