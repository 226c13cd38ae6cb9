"""The bench's network axes and columns, without namespaces: the matrix's networks and compress axes (cell keys,
configs, exclusions, refusals), the rows' link and busy figures, and the report's section and plot."""

from __future__ import annotations

import pytest
from bench_fakes import suite_dict

from slperf.bench import network_report, report
from slperf.bench.rows import finalize_row
from slperf.bench.suite import SuiteError, expand, load_suite, parse_suite

NETWORKS = [{"name": "lan", "rate_mbit": 1000, "delay_ms": 0.5}, {"rate_mbit": 10, "delay_ms": 50}]


def _suite(**matrix):
    raw = suite_dict()
    raw["matrix"] = {"paradigms": ["vanilla", "fedavg"], "clients": [2], **matrix}
    raw["centralized"] = False
    return raw


def test_networks_and_compress_axes_make_cells_with_their_configs_and_keys():
    raw = _suite(networks=NETWORKS, compress=["none", "int8:channel"])
    raw["exclude"] = [{"paradigm": "fedavg", "compression": "int8:channel"}]
    cells = expand(parse_suite(raw))
    keys = [c.key for c in cells]
    assert "vanilla/mnist/homo/c2/s0/net-lan/z-none" in keys
    assert "vanilla/mnist/homo/c2/s0/net-10Mbit-50ms/z-int8:channel" in keys
    assert not [k for k in keys if k.startswith("fedavg") and k.endswith("int8:channel")]
    assert len(cells) == 2 * (2 + 1)  # networks x (vanilla with both codecs + fedavg uncompressed)
    cell = next(c for c in cells if c.key.endswith("net-10Mbit-50ms/z-int8:channel"))
    assert cell.config["network"] == {"rate_mbit": 10, "delay_ms": 50}
    assert cell.config["compress"] == {"up": "int8:channel", "down": "int8:channel"}
    assert (cell.network, cell.compression) == ("10Mbit-50ms", "int8:channel")


def test_without_the_axes_keys_stay_as_they_were():
    cells = expand(parse_suite(_suite()))
    assert cells[0].key == "vanilla/mnist/homo/c2/s0" and cells[0].network == ""


@pytest.mark.parametrize(
    ("matrix", "base", "message"),
    [
        ({"networks": [{"rate_mbit": 10, "jitter": 1}]}, {}, "unknown key(s) jitter"),
        ({"networks": ["wan"]}, {}, "must be a mapping"),
        ({"networks": [{"rate_mbit": 10}, {"rate_mbit": 10}]}, {}, "named alike"),
        ({"networks": [{"rate_mbit": 10}]}, {"network": {"rate_mbit": 5}}, "base key 'network' is set by the matrix"),
        ({"compress": [{"sideways": "int8"}]}, {}, "matrix compress entries"),
        ({"compress": ["int9"]}, {}, "int9"),
    ],
)
def test_bad_axes_are_refused_before_anything_runs(matrix, base, message):
    raw = _suite(**matrix)
    raw["base"].update(base)
    with pytest.raises(SuiteError) as err:
        expand(parse_suite(raw))
    assert message in str(err.value)


def test_the_network_suite_ships_its_matrix():
    cells = expand(load_suite("network"))
    assert {c.paradigm for c in cells} == {"vanilla", "splitfed_v1", "splitfed_v2", "psl", "ushaped", "fedavg"}
    assert {c.network for c in cells} == {"lan", "wan", "constrained"}
    assert {c.compression for c in cells} == {"none", "int8:channel"}
    assert len(cells) == 3 * (5 * 2 + 1)
    wan = next(c for c in cells if c.network == "wan")
    assert wan.config["network"] == {"name": "wan", "rate_mbit": 100, "delay_ms": 25}


def _row(paradigm, network, rate, seconds, compression="none", accs=(0.5, 0.85)):
    cells = expand(parse_suite(_suite(networks=[{"name": network, "rate_mbit": rate, "delay_ms": 5}])))
    cell = next(c for c in cells if c.paradigm == paradigm and c.seed == 0)
    curve = [
        {"round": i + 1, "test_accuracy": a, "round_seconds": seconds, "seconds": seconds * (i + 1)}
        for i, a in enumerate(accs)
    ]
    links = [
        {"client": cid, "rate_mbit": rate, "delay_ms": 5, "up_mbit": rate * f, "down_mbit": rate, "rtt_path_ms": 11.0}
        for cid, f in (("c1", 0.9), ("c2", 0.95))
    ]
    measured = {
        "curve": curve,
        "network_links": links,
        "server_compute_seconds": seconds / 2,
        "run_seconds": 2 * seconds + 1,
    }
    row = finalize_row(cell, measured, target=0.8)
    row["compression"] = compression
    return row


def test_rows_carry_the_measured_link_time_per_round_time_to_target_and_busy_share():
    row = _row("vanilla", "wan", 100, 4.0)
    assert row["network"] == "wan" and row["link_rate_mbit"] == 100
    assert row["link_up_mbit"] == pytest.approx(90) and row["link_down_mbit"] == 100  # the slowest client
    assert row["link_rtt_ms"] == 11.0
    assert row["seconds_per_round"] == 4.0 and row["seconds_to_target"] == 8.0
    assert row["server_busy_fraction"] == pytest.approx(2.0 / 9.0)
    assert _row("vanilla", "wan", 100, 4.0, accs=(0.1, 0.2))["seconds_to_target"] is None


def test_report_has_a_network_section_and_a_time_to_accuracy_plot(tmp_path):
    rows = [
        _row(p, n, rate, secs, z)
        for p in ("vanilla", "fedavg")
        for n, rate, secs in (("lan", 1000, 1.0), ("slow", 10, 6.0))
        for z in ("none", "int8:channel")
    ]
    plots = report.write_plots(rows, tmp_path / "plots")
    assert tmp_path / "plots" / network_report.PLOT_NAME in plots
    text = report.report_markdown(rows, plots=plots)
    assert "## Over shaped links" in text and "### compress: int8:channel" in text
    assert f"plots/{network_report.PLOT_NAME}" in text
    line = next(li for li in text.splitlines() if li.startswith("| vanilla | slow |"))
    assert "9.0 / 10.0" in line and "| 6.00 |" in line and "| 12.0 |" in line  # rates, per round, to target
    lan_first = [li.split(" | ")[1] for li in text.splitlines() if li.startswith("| fedavg |")]
    assert lan_first[:2] == ["lan", "slow"]  # the fastest link first
    assert "vanilla [wan" not in text and "vanilla [lan, none]" in text  # main tables never mix profiles
    csv = report.csv_text(rows)
    header = csv.splitlines()[0].split(",")
    assert {"network", "link_up_mbit", "seconds_to_target", "server_busy_fraction"} <= set(header)
