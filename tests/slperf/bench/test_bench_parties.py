"""Per-party figures of a cell: built from the summary's container figures and the probe's readings, flattened
into the CSV columns, and shown in the report's per-party section."""

from __future__ import annotations

from slperf.bench.parties import parties_markdown, party_columns, party_figures
from slperf.bench.report import csv_text, report_markdown

SUMMARY = {
    "client_containers": {
        "image": "slperf:latest",
        "clients": {
            "c1": {
                "limits": {"cpus": 0.5, "memory_mb": 768},
                "train_ms_per_batch": 9.0,
                "train_steps": 20,
                "train_core_share": 0.5,
            },
            "c2": {"limits": {"cpus": None, "memory_mb": None}, "train_ms_per_batch": 4.0, "train_steps": 20},
        },
    }
}


def test_party_figures_join_limits_compute_cpu_and_memory():
    parties = party_figures(SUMMARY, {"server": 3.0, "c1": 1.5, "c2": 1.2}, 400.0, {"c1": 300.0, "c2": 310.0})
    assert parties["server"] == {"cpu_seconds": 3.0, "peak_rss_mb": 400.0}
    assert parties["c1"] == {
        "cpu_seconds": 1.5,
        "peak_rss_mb": 300.0,
        "cpus": 0.5,
        "memory_mb": 768,
        "train_ms_per_batch": 9.0,
        "train_core_share": 0.5,
        "train_steps": 20,
    }
    assert party_columns(parties) == {
        "cpu_seconds_server": 3.0,
        "cpu_seconds_client_max": 1.5,
        "client_train_ms_per_batch_max": 9.0,
    }


def test_host_process_clients_have_cpu_and_memory_only():
    parties = party_figures({}, {"server": 1.0, "c1": 0.5}, 100.0, {"c1": 90.0})
    assert parties["c1"] == {"cpu_seconds": 0.5, "peak_rss_mb": 90.0}
    assert party_columns(parties)["client_train_ms_per_batch_max"] is None
    assert "| c1 | host process | 0.5 | 90 | — | — | — |" in parties_markdown([_row(parties)])


def _row(parties):
    return {
        "status": "ok",
        "key": "mnist/homo/c2/splitfed_v1/s0",
        "paradigm": "splitfed_v1",
        "dataset": "mnist",
        "partition": "homo",
        "clients": 2,
        "parties": parties,
        **party_columns(parties),
    }


def test_report_has_the_per_party_section_and_the_csv_its_columns():
    parties = party_figures(SUMMARY, {"server": 3.0, "c1": 1.5, "c2": 1.2}, 400.0, {"c1": 300.0, "c2": 310.0})
    text = report_markdown([_row(parties)])
    assert "## Per-party compute and memory" in text
    assert "| c1 | 0.5 cpus, 768 MiB | 1.5 | 300 | 9.00 | 0.50 | 20 |" in text
    assert "| c2 | container, unlimited | 1.2 | 310 | 4.00 | — | 20 |" in text
    assert "| server | host process | 3.0 | 400 | — | — | — |" in text
    header, line = csv_text([_row(parties)]).splitlines()
    assert dict(zip(header.split(","), line.split(",")))["client_train_ms_per_batch_max"] == "9.0"
    assert parties_markdown([{**_row(parties), "parties": {}}]) == []
