"""Fuzzing from inside a run: a participant's own session carries junk between its real messages, in every phase
(set-up, weights, training, evaluation), for every paradigm family. Every run must end ``finished`` with exactly
the results (per-round figures and final weights) of the same run without the junk: a refused message changes
nothing, and nobody is dropped for it.

One server and three daemons serve all the runs: c1 and c3 are honest, c2 fuzzes. A clean run is c1 + c3, its
fuzzed twin c1 + c2 (the same client indices, so the same shards)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch
import yaml

from slperf.common.security.credentials import operator_channel_credentials
from slperf.operator import OperatorClient
from slperf.slserver.checkpoint import load_checkpoint
from slperf.slserver.run_folder import RunFolder
from tests.conftest import child_env, client_args

pytestmark = pytest.mark.slow

MIN_JUNK = 10_000
BASE = {
    "clients": 2,
    "epochs": 2,
    "batch_size": 16,
    "eval_batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 96,
    "max_test_samples": 64,
    "seed": 11,
}
FAMILIES = {
    "vanilla": {"paradigm": "vanilla"},  # bottom relayed client to client, sequential
    "splitfed_v1": {"paradigm": "splitfed_v1"},  # parallel, one top per client, bottoms averaged
    "ushaped": {"paradigm": "ushaped"},  # two stages per step, labels stay home
    "vertical": {"paradigm": "vertical", "dataset": "adult", "model": "mlp"},  # lock-step parties, sample ids
    "fedavg": {"paradigm": "fedavg"},  # no cut: instructions, PhaseDone and weights only
}


def _fuzzing_client(daemons, port: int, pki, report) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.faults.fuzzing_client", "--junk-per-message", "150", "--seed", "7"]
    cmd += ["--report", str(report), "--", *client_args(port, "c2", pki)]
    proc = subprocess.Popen(cmd, stdout=open(daemons.tmp / "c2.log", "wb"), stderr=subprocess.STDOUT, env=child_env())
    daemons.procs.append(proc)
    return proc


def _figures(records: list[dict]) -> list[dict]:
    """What a round's record says about learning (not bytes, which include the junk, nor times)."""
    keep = ("round", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "dropped")
    return [{k: r.get(k) for k in keep} for r in records]


def test_junk_inside_runs_of_every_paradigm_family_changes_nothing_and_drops_nobody(tmp_path, pki, daemons):
    runs = tmp_path / "runs"
    report = tmp_path / "junk-report.txt"
    port = daemons.server(pki, runs)
    for cid in ("c1", "c3"):
        daemons.client(port, cid, pki)
    _fuzzing_client(daemons, port, pki, report)
    op = OperatorClient(f"127.0.0.1:{port}", operator_channel_credentials(pki), server_name="localhost")
    outcomes = {}
    try:
        for family, overrides in FAMILIES.items():
            for kind, ids in (("clean", ["c1", "c3"]), ("fuzzed", ["c1", "c2"])):
                config = yaml.safe_dump({**BASE, **overrides, "client_ids": ids})
                status = op.follow(op.start_run(config, f"{family}-{kind}"), lambda record: None)
                outcomes[f"{family}-{kind}"] = (status.state, status.error)
    finally:
        op.close()
    assert all(state == "finished" for state, _ in outcomes.values()), (outcomes, daemons.log("server")[-3000:])
    counts = Counter(tuple(line.split()) for line in report.read_text().splitlines() if len(line.split()) == 2)
    junk = {family: counts[("junk", f"{family}-fuzzed")] for family in FAMILIES}
    errors = {family: counts[("error", f"{family}-fuzzed")] for family in FAMILIES}
    assert sum(junk.values()) >= MIN_JUNK and min(junk.values()) >= 200, junk
    # Refused on the stream, not ignored (the odd case still queued when a phase ends is drained unanswered).
    assert all(errors[f] >= 0.9 * junk[f] for f in FAMILIES), (junk, errors)
    for family in FAMILIES:
        clean = RunFolder(runs / f"{family}-clean").read_metrics()
        fuzzed = RunFolder(runs / f"{family}-fuzzed").read_metrics()
        assert len(fuzzed) == BASE["epochs"] and _figures(fuzzed) == _figures(clean), family
        assert all(r["dropped"] == [] for r in fuzzed), family
        a = load_checkpoint(runs / f"{family}-clean" / "checkpoint.pt")["model"]
        b = load_checkpoint(runs / f"{family}-fuzzed" / "checkpoint.pt")["model"]
        assert a.keys() == b.keys(), family
        for segment in a:
            for name, tensor in a[segment].items():
                assert torch.equal(tensor, b[segment][name]), (family, segment, name)
