"""The server's Prometheus endpoint on a real server process with real client daemons over mutual TLS: scraped
twice during a run, its counters move (bytes and messages per client and direction, steps and compute time, round
progress), sessions are counted, a refused Control call is counted by its status code. The run's TensorBoard
events read back equal its metrics.jsonl."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.slserver.metrics import METRICS_READY_PREFIX
from slperf.slserver.run_folder import RunFolder
from slperf.slserver.tensorboard_log import read_events, scalars_of

pytestmark = pytest.mark.slow

CONFIG = {
    "paradigm": "vanilla",
    "dataset": "mnist",
    "client_ids": ["c1", "c2"],
    "clients": 2,
    "epochs": 3,
    "batch_size": 32,
    "max_train_samples": 300,
    "max_test_samples": 100,
    "seed": 0,
}


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _sum(scrape: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and wanted <= set(ls))


def test_the_metrics_endpoint_counts_a_run_as_it_goes(tmp_path, pki, daemons):
    port = daemons.server(pki, tmp_path / "runs", "--metrics-address", "127.0.0.1:0")
    line = daemons.server_proc.stdout.readline().decode().strip()
    assert line.startswith(METRICS_READY_PREFIX), line
    metrics_port = int(line[len(METRICS_READY_PREFIX) :])
    for cid in ("c1", "c2"):
        daemons.client(port, cid, pki)
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            op.stop_run("no-such-run")
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        run_id = op.start_run(yaml.safe_dump(CONFIG), "watched")
        scrapes = []
        for kind, payload, status in op.watch(run_id):
            if kind == "round" and payload["round"] in (0, 1):
                scrapes.append(_scrape(metrics_port))  # the run is still going: round 1 or 2 comes next
            if status.state in ("finished", "failed", "stopped"):
                break
        assert status.state == "finished", status.error
    finally:
        op.close()
    first, second = scrapes
    for cid in ("c1", "c2"):
        for direction in ("up", "down"):
            for name in ("slperf_server_client_bytes_total", "slperf_server_client_messages_total"):
                before = first[(name, (("client", cid), ("direction", direction)))]
                after = second[(name, (("client", cid), ("direction", direction)))]
                assert 0 < before < after, (name, cid, direction, before, after)
        by_kind = "slperf_server_client_messages_by_kind_total"
        assert (
            0
            < _sum(first, by_kind, client=cid, kind="cut_tensor")
            < _sum(second, by_kind, client=cid, kind="cut_tensor")
        )
        envelopes = second[("slperf_server_client_messages_total", (("client", cid), ("direction", "up")))]
        assert _sum(second, by_kind, client=cid) <= envelopes  # a chunked message is many envelopes
    assert 0 < _sum(first, "slperf_server_step_seconds_count") < _sum(second, "slperf_server_step_seconds_count")
    assert 0 < _sum(first, "slperf_server_step_seconds_sum") < _sum(second, "slperf_server_step_seconds_sum")
    steps = {dict(labels)["step"] for (name, labels) in first if name == "slperf_server_step_seconds_count"}
    assert "top_train_step" in steps, steps  # vanilla's server step, by the function that ran
    assert (
        first[("slperf_server_run_round", (("run_id", "watched"),))]
        < second[("slperf_server_run_round", (("run_id", "watched"),))]
    )
    assert first[("slperf_server_run_rounds", (("run_id", "watched"),))] == 3
    assert _sum(first, "slperf_server_sessions") == 2
    assert first[("slperf_server_errors_total", (("code", "NOT_FOUND"), ("where", "call")))] == 1
    assert _sum(second, "slperf_server_run_info", run_id="watched", state="running") == 1

    # The run folder's TensorBoard events are the metrics.jsonl records, round by round, per client too.
    records = RunFolder(tmp_path / "runs" / "watched").read_metrics()
    events = read_events(tmp_path / "runs" / "watched")
    assert events["test/accuracy"] == {r["round"]: r["test_accuracy"] for r in records}
    assert events["client/c2/bytes_up"] == {r["round"]: r["per_client"]["c2"]["bytes_up"] for r in records}
    assert events == {tag: {r["round"]: scalars_of(r)[tag] for r in records if tag in scalars_of(r)} for tag in events}
    assert set(events) == {tag for r in records for tag in scalars_of(r)}
