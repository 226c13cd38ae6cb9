"""Split inference and export end to end: a server and two client daemons as processes over mutual TLS train a
tiny run; then `slperf predict` from one silo, on the run's held-out MNIST test images, gets exactly as many
right as the run's final evaluation did, for a bottom/top paradigm (splitfed_v1) and for U-shaped, where no
output or label crosses the wire; `slperf export --assemble` gives the same count in one process; a client that
did not take part is refused, an unknown run is not found."""

from __future__ import annotations

import csv
import os
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from slperf.common.data import cap_indices, load_dataset
from slperf.common.security.credentials import resolve_credential_files
from slperf.common.security.layout import ca_paths, client_paths
from slperf.common.transport.channel import create_sync_channel
from slperf.slclient.inputs import prepare
from slperf.slclient.predict import Predictor, load_local_model
from slperf.slclient.state_store import StateStore
from tests.conftest import child_env, slperf_cmd

pytestmark = pytest.mark.slow

TEST_SAMPLES = 300
CONFIG = {
    "dataset": "mnist",
    "clients": 2,
    "client_ids": ["c1", "c2"],
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 600,
    "max_test_samples": TEST_SAMPLES,
    "seed": 1,
}


def _held_out(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The run's test images (the capped test split every client evaluates on) as raw uint8 pixels, and labels."""
    arrays = load_dataset("mnist").arrays
    rows = cap_indices(np.arange(len(arrays.test_y), dtype=np.int64), TEST_SAMPLES, CONFIG["seed"])
    images = np.asarray(arrays.test_x)[rows]
    path = tmp_path / "images.npy"
    np.save(path, images)
    return path, images, np.asarray(arrays.test_y)[rows]


def _trained(daemons, pki, paradigm: str) -> tuple[str, int]:
    """(run id, correct predictions in the run's final evaluation)."""
    summary, records = daemons.federate(pki, {**CONFIG, "paradigm": paradigm})
    (run_dir,) = [p for p in (daemons.tmp / "runs").iterdir() if p.is_dir()]
    final = records[-1]
    assert final["test_samples"] == TEST_SAMPLES
    for cid in CONFIG["client_ids"]:
        _wait_for_final_segments(run_dir.name, cid)
    return run_dir.name, round(final["test_accuracy"] * TEST_SAMPLES)


def _wait_for_final_segments(run_id: str, client_id: str, deadline: float = 30.0) -> None:
    """The daemon keeps its segments when it reads the run's Finish, which the operator's follower may see first:
    waits for the file it writes last (atomically), bounded by ``deadline``."""
    path = Path(os.environ["SLPERF_STATE"]) / "runs" / run_id / client_id / "final.json"
    end = time.monotonic() + deadline
    while not path.exists():
        assert time.monotonic() < end, f"client {client_id} kept no final segments of run {run_id}"
        time.sleep(0.05)  # polling a file's appearance, bounded by the deadline


def _port(daemons) -> int:
    log = daemons.log("server")
    line = next(line for line in log.splitlines() if "listening on port" in line)
    return int(line.split("listening on port ")[1].split()[0])


def _predict_cli(pki: Path, port: int, client_id: str, run_id: str, inputs: Path, out: Path, *extra: str):
    cert, key = client_paths(pki, client_id)
    args = ["predict", "--server", f"127.0.0.1:{port}", "--id", client_id, "--ca", str(ca_paths(pki)[0])]
    args += ["--cert", str(cert), "--key", str(key), "--server-name", "localhost", "--run", run_id]
    args += ["--input", str(inputs), "--out", str(out), "--batch-size", "64", "--no-progress", *extra]
    return subprocess.run(slperf_cmd(*args), capture_output=True, text=True, timeout=120, env=child_env())


def _classes(path: Path) -> np.ndarray:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == list(range(len(rows)))
    return np.array([int(r["class"]) for r in rows])


def _channel(pki: Path, port: int, client_id: str) -> grpc.Channel:
    cert, key = client_paths(pki, client_id)
    files = resolve_credential_files(certs_dir=None, ca=ca_paths(pki)[0], cert=cert, key=key)
    return create_sync_channel(f"127.0.0.1:{port}", files.credentials(), server_name="localhost")


def test_splitfed_predict_and_assembled_export_match_the_runs_accuracy(pki, daemons, tmp_path):
    run_id, correct = _trained(daemons, pki, "splitfed_v1")
    port = _port(daemons)
    inputs, images, labels = _held_out(tmp_path)
    out = tmp_path / "predictions.csv"
    proc = _predict_cli(pki, port, "c2", run_id, inputs, out, "--probabilities")
    assert proc.returncode == 0, proc.stderr
    predicted = _classes(out)
    assert len(predicted) == TEST_SAMPLES
    assert int((predicted == labels).sum()) == correct  # the very count the run's final evaluation got
    with open(out, newline="") as handle:
        first = next(csv.DictReader(handle))
    assert abs(sum(float(first[f"p{k}"]) for k in range(10)) - 1.0) < 1e-4

    # The whole model in one process, from the server's run folder and the clients' state on this machine.
    export_dir = tmp_path / "export"
    proc = subprocess.run(
        slperf_cmd("export", "--assemble", run_id, "--runs-dir", str(daemons.tmp / "runs"), "--out", str(export_dir)),
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    scripted = torch.jit.load(str(export_dir / "model.pt"))
    spec = load_dataset("mnist").spec
    with torch.no_grad():
        logits = scripted(prepare(images.reshape(len(images), 1, 28, 28), spec))
    assert int((logits.argmax(1).numpy() == labels).sum()) == correct

    # A client with a certificate of this CA that did not take part, and a run this server never had.
    proc = _predict_cli(pki, port, "c3", run_id, inputs, tmp_path / "c3.csv", "--state-dir", str(tmp_path / "c3"))
    assert proc.returncode != 0
    assert "did not take part" in proc.stderr or "no final segments" in proc.stderr, proc.stderr
    refused = _refused(pki, port, "c3", run_id, run_id)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "did not take part" in refused.details()
    assert _refused(pki, port, "c1", "no-such-run", run_id).code() == grpc.StatusCode.NOT_FOUND


def _refused(pki: Path, port: int, client_id: str, run_id: str, trained: str) -> grpc.RpcError:
    """The error a Predict call of ``client_id`` for ``run_id`` ends with (c1's segments of ``trained`` make the
    requests)."""
    model = load_local_model(StateStore(Path(os.environ["SLPERF_STATE"]), "c1"), trained)
    model.client_id, model.run_id = client_id, run_id
    channel = _channel(pki, port, client_id)
    try:
        Predictor(channel, model, timeout=30).predict(np.zeros((2, 1, 28, 28), dtype=np.uint8), 2)
    except grpc.RpcError as err:
        return err
    finally:
        channel.close()
    raise AssertionError(f"client {client_id} was not refused for run {run_id}")


def test_ushaped_predict_keeps_outputs_and_labels_on_the_silo(pki, daemons, tmp_path):
    run_id, correct = _trained(daemons, pki, "ushaped")
    port = _port(daemons)
    _, images, labels = _held_out(tmp_path)
    crossed: list[tuple[str, object]] = []
    model = load_local_model(StateStore(Path(os.environ["SLPERF_STATE"]), "c1"), run_id)
    assert model.kind == "middle"
    channel = _channel(pki, port, "c1")
    try:
        result = Predictor(channel, model, observe=lambda way, m: crossed.append((way, m))).predict(images, 100)
    finally:
        channel.close()
    assert int((result.classes == labels).sum()) == correct
    up = [m for way, m in crossed if way == "up"]
    down = [m for way, m in crossed if way == "down"]
    assert len(up) == len(down) == 3
    for request in up:  # the head's activations, and nothing else (a PredictRequest has no label field at all)
        assert list(request.activations.shape)[1:] == [6, 12, 12]
        assert {f.name for f, _ in request.ListFields()} <= {"run_id", "client_id", "batch", "activations"}
    for reply in down:  # the middle's output, not the model's: the tail's outputs (10 classes) stay here
        assert list(reply.output.shape)[1:] == [256] and reply.kind == "middle"
