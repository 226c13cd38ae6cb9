"""The simulation backend against the federation backend, at the same seed on a tiny config.

For every paradigm whose schedule is deterministic, the two must give the same per-round test accuracy (and loss)
and the same byte counts, up and down, per round and client and in the summary's train and total figures: the
sim runs the same paradigm objects, endpoints, serde and framing, only over in-memory links. For the paradigms
whose server serves batches in the order they arrive (psl's default, splitfed_v2's parallel order, U-shaped's
parallel schedule) the numbers may differ, so only what is fixed by the schedule is compared: that the sim
finishes, the rounds, and the bytes, which depend on the order only through the few bytes of the varint-encoded
per-batch figures (``correct`` counts) that a different model gives.

The federation side is one real server and two client daemons (processes, mutual TLS) for the whole module, each
config started on it by the operator as a separate run, so the processes start once; the sim side is
``run_simulation``, the ``slperf federation --backend sim`` entry point, once per config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Daemons

from slperf.pki import add_client, init_pki
from slperf.sim import run_simulation
from slperf.slserver.run_folder import RunFolder

pytestmark = pytest.mark.slow

TINY: dict[str, Any] = {
    "clients": 2,
    "epochs": 2,
    "batch_size": 32,
    "eval_batch_size": 50,
    "lr": 0.05,
    "max_train_samples": 192,
    "max_test_samples": 100,
    "seed": 1,
    "torch_threads": 1,
}

DETERMINISTIC: dict[str, dict[str, Any]] = {
    "vanilla": {"paradigm": "vanilla"},
    "ushaped": {"paradigm": "ushaped"},  # schedule: sequential
    "splitfed_v1": {"paradigm": "splitfed_v1"},
    "splitfed_v2_sequential": {"paradigm": "splitfed_v2", "order": "sequential"},
    "psl_sum": {"paradigm": "psl", "server_update": "sum"},
    "psl_lockstep": {"paradigm": "psl", "server_update": "lockstep"},
    "sglr": {"paradigm": "sglr"},
    "async": {"paradigm": "async", "thred": 1.0},
    "fedavg": {"paradigm": "fedavg"},
    "vertical": {"paradigm": "vertical", "dataset": "adult", "batch_size": 64, "max_train_samples": 256},
    "multitask": {"paradigm": "multitask", "client_split": [1, 2], "task_datasets": ["mnist", "mnist"]},
}

ARRIVAL_ORDER: dict[str, dict[str, Any]] = {
    "psl_arrival": {"paradigm": "psl"},
    "splitfed_v2_parallel": {"paradigm": "splitfed_v2"},
    "ushaped_parallel": {"paradigm": "ushaped", "schedule": "parallel"},
}

BYTE_KEYS = ("bytes_up", "bytes_down", "train_bytes_up", "train_bytes_down")


Outcome = tuple[dict[str, Any], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """A server and client daemons c1, c2 over mutual TLS, kept for every config of this module."""
    tmp = tmp_path_factory.mktemp("federation")
    certs = tmp / "certs"
    init_pki(certs)
    for cid in ("c1", "c2"):
        add_client(certs, cid)
    daemons = Daemons(tmp)
    try:
        yield daemons, certs
    finally:
        daemons.close()


def _both(federation: tuple[Daemons, Path], tmp_path: Path, overrides: dict[str, Any]) -> dict[str, Outcome]:
    daemons, certs = federation
    config = {**TINY, **overrides, "client_ids": ["c1", "c2"]}
    out = {"federation": _federate(daemons, certs, config)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_simulation(path, tmp_path / "sim", show_progress=False, echo=lambda line: None)
    out["sim"] = summary, RunFolder(Path(summary["run_dir"])).read_metrics()
    return out


def _federate(daemons: Daemons, certs: Path, config: dict[str, Any]) -> Outcome:
    """The config as a run on the module's server (started with its first config), with client daemons started for
    it: fresh sessions, as ``slperf federation`` and the sim have. (Every envelope carries its session's sequence
    number as a varint, so a daemon that stayed connected through earlier runs sends a few bytes more.)"""
    import json

    from slperf.common.security.credentials import operator_channel_credentials
    from slperf.federation import stop_processes
    from slperf.operator import OperatorClient

    runs = daemons.tmp / "runs"
    if daemons.server_proc is None:
        daemons.port = daemons.server(certs, runs)  # type: ignore[attr-defined]
    stop_processes([p for p in daemons.procs if p is not daemons.server_proc], grace=10)
    for cid in config["client_ids"]:
        daemons.client(daemons.port, cid, certs)  # type: ignore[attr-defined]
    op = OperatorClient(
        f"127.0.0.1:{daemons.port}",  # type: ignore[attr-defined]
        operator_channel_credentials(certs),
        server_name="localhost",
    )
    try:
        status = op.follow(op.start_run(yaml.safe_dump(config)), lambda record: None)
    finally:
        op.close()
    assert status.state == "finished", status.error + daemons.log("server")[-3000:]
    summary = json.loads(status.summary_json)
    return summary, RunFolder(runs / summary["run_id"]).read_metrics()


@pytest.mark.parametrize("case", sorted(DETERMINISTIC))
def test_sim_gives_the_federations_accuracy_and_bytes(federation, tmp_path, case):
    runs = _both(federation, tmp_path, DETERMINISTIC[case])
    (fed, fed_records), (sim, sim_records) = runs["federation"], runs["sim"]
    assert sim["rounds"] == fed["rounds"] == TINY["epochs"]
    diffs = [
        (f["round"], cid, key, figures[key], s["per_client"][cid][key])
        for f, s in zip(fed_records, sim_records)
        for cid, figures in f["per_client"].items()
        for key in figures
        if figures[key] != s["per_client"][cid][key]
    ]
    assert not diffs
    for key in BYTE_KEYS:
        assert sim[key] == fed[key], key
    assert sim["per_client"] == fed["per_client"]
    for f, s in zip(fed_records, sim_records, strict=True):
        assert s["test_accuracy"] == f["test_accuracy"], f"round {f['round']}"
        assert s["test_loss"] == pytest.approx(f["test_loss"], rel=1e-6, abs=1e-9)
        assert s["train_loss"] == pytest.approx(f["train_loss"], rel=1e-6, abs=1e-9)
        assert (s["bytes_up"], s["bytes_down"]) == (f["bytes_up"], f["bytes_down"])
        assert s["per_client"].keys() == f["per_client"].keys()
        for cid, figures in f["per_client"].items():
            mine = s["per_client"][cid]
            for key in ("bytes_up", "bytes_down", "eval_bytes_up", "eval_bytes_down", "samples"):
                assert mine[key] == figures[key], (cid, key)
    assert sim["test_accuracy"] > 0.0 and fed["bytes_up"] > 0


@pytest.mark.parametrize("case", sorted(ARRIVAL_ORDER))
def test_sim_runs_arrival_order_paradigms_with_the_same_traffic(federation, tmp_path, case):
    runs = _both(federation, tmp_path, ARRIVAL_ORDER[case])
    (fed, _), (sim, sim_records) = runs["federation"], runs["sim"]
    assert sim["rounds"] == fed["rounds"] == len(sim_records) == TINY["epochs"]
    for key in BYTE_KEYS:
        # The same messages with the same tensors cross; only varint-coded per-batch counts may differ in length.
        assert abs(sim[key] - fed[key]) <= 16 * fed["rounds"] * 8, (key, sim[key], fed[key])
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in sim_records)
