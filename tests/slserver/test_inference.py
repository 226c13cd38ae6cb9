"""The Inference service against a server process (plaintext, claimed ids) serving a run folder written by hand
the way a finished run leaves it: bad input is INVALID_ARGUMENT naming what is wrong, an unfinished run is
FAILED_PRECONDITION, a non-participant PERMISSION_DENIED, and once the operator removes the model it is NOT_FOUND."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
import yaml

from slperf.common.config import RunConfig
from slperf.common.models import build_split
from slperf.common.wire.codec import encode_tensor
from slperf.operator import OperatorClient
from slperf.slserver.served_models import write_serving
from slperf.v1 import inference_pb2, inference_pb2_grpc
from tests.conftest import Daemons

CONFIG = RunConfig(paradigm="splitfed_v1", dataset="mnist", clients=1, client_ids=["c1"], seed=3)


def _run_folder(runs, run_id: str, state: str | None) -> None:
    folder = runs / run_id
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG.to_dict()))
    if state is not None:
        (folder / "state.json").write_text(json.dumps({"state": state}))
    top = build_split("lenet", (1, 28, 28), 10, CONFIG.seed, [1]).segments[1].state_dict()
    write_serving(folder, run_id, CONFIG, ["c1"], {"top": top})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module (each test uses its own run where it changes one)."""
    tmp = tmp_path_factory.mktemp("inference")
    runs = tmp / "runs"
    for run_id, state in (("done", "finished"), ("removable", "finished"), ("broken", "failed")):
        _run_folder(runs, run_id, state)
    _run_folder(runs, "vertical", "finished")
    write_serving(runs / "vertical", "vertical", CONFIG, ["c1"], None, "vertical split learning does not support it")
    daemons = Daemons(tmp)
    try:
        port = daemons.server(None, runs)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield port, inference_pb2_grpc.InferenceStub(channel)
        channel.close()
    finally:
        daemons.close()


def _call(stub, *tensors: torch.Tensor, run_id: str = "done", client_id: str = "c1"):
    requests = [
        inference_pb2.PredictRequest(run_id=run_id, client_id=client_id, batch=i, activations=encode_tensor(t))
        for i, t in enumerate(tensors)
    ]
    return list(stub.Predict(iter(requests), timeout=30))


def _error(stub, *tensors: torch.Tensor, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _call(stub, *tensors, **kwargs)
    return caught.value


def test_a_finished_run_answers_every_batch_in_order(served):
    _, stub = served
    replies = _call(stub, torch.randn(3, 6, 12, 12), torch.randn(1, 6, 12, 12))
    assert [r.batch for r in replies] == [0, 1]
    assert [list(r.output.shape) for r in replies] == [[3, 10], [1, 10]]
    assert {r.kind for r in replies} == {"top"} and replies[0].max_batch == 1024


@pytest.mark.parametrize(
    "tensor, words",
    [
        (torch.randn(2, 6, 12, 11), "expects [B, 6, 12, 12]"),
        (torch.randn(2, 864), "expects [B, 6, 12, 12]"),
        (torch.randn(1025, 6, 12, 12), "1..1024 are allowed"),
        (torch.randn(2, 6, 12, 12, dtype=torch.float64), "float64 is not allowed"),
        (torch.full((1, 6, 12, 12), float("nan")), "NaN"),
    ],
)
def test_bad_activations_are_invalid_argument(served, tensor, words):
    _, stub = served
    error = _error(stub, tensor)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()


def test_who_and_which_run(served):
    port, stub = served
    x = torch.randn(1, 6, 12, 12)
    refused = _error(stub, x, client_id="c2")
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "did not take part" in refused.details()
    assert _error(stub, x, run_id="nope").code() == grpc.StatusCode.NOT_FOUND
    unsupported = _error(stub, x, run_id="vertical")
    assert unsupported.code() == grpc.StatusCode.FAILED_PRECONDITION and "vertical" in unsupported.details()
    unfinished = _error(stub, x, run_id="broken")
    assert unfinished.code() == grpc.StatusCode.FAILED_PRECONDITION and "failed" in unfinished.details()
    op = OperatorClient(f"127.0.0.1:{port}", None)
    try:
        assert op.remove_model("removable") is True
        assert op.remove_model("removable") is False
    finally:
        op.close()
    gone = _error(stub, x, run_id="removable")
    assert gone.code() == grpc.StatusCode.NOT_FOUND and "removed" in gone.details()
