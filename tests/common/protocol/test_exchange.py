"""Declared exchanges: what each direction's check refuses, and what every registered paradigm declares."""

from __future__ import annotations

import grpc
import pytest
import torch

from slperf.common.config_loader import config_from_mapping
from slperf.common.paradigms import registry
from slperf.common.protocol.errors import WireError
from slperf.common.protocol.exchange import Exchange, Stage, TensorSpec
from slperf.common.protocol.types import CutReply, CutTensor, Phase, StepRef

CUT = TensorSpec((6, 12, 12))
TOP = Exchange(
    train=(Stage(up=CUT, down=CUT, labels=True),),
    eval=(Stage(up=CUT, labels=True),),
    num_classes=10,
    max_batch=64,
    max_eval_batch=500,
)
REF = StepRef("r", 0, 0, Phase.TRAIN)


def _up(tensor, labels=None, **kw) -> CutTensor:
    return CutTensor(REF, tensor, labels, **kw)


def _refused(call, code, word):
    with pytest.raises(WireError) as caught:
        call()
    assert caught.value.code == code and word in caught.value.message, caught.value


def test_the_server_side_check_refuses_what_the_stage_does_not_declare():
    stage = TOP.train[0]
    TOP.check_up(_up(torch.zeros(8, 6, 12, 12), torch.zeros(8, dtype=torch.int64)), stage)
    ia = grpc.StatusCode.INVALID_ARGUMENT
    _refused(
        lambda: TOP.check_up(_up(torch.zeros(8, 6, 12, 11), torch.zeros(8, dtype=torch.int64)), stage), ia, "shape"
    )
    _refused(
        lambda: TOP.check_up(
            _up(torch.zeros(8, 6, 12, 12, dtype=torch.float64), torch.zeros(8, dtype=torch.int64)), stage
        ),
        ia,
        "dtype",
    )
    _refused(
        lambda: TOP.check_up(_up(torch.zeros(65, 6, 12, 12), torch.zeros(65, dtype=torch.int64)), stage), ia, "1..64"
    )
    _refused(lambda: TOP.check_up(_up(torch.zeros(8, 6, 12, 12)), stage), ia, "no labels")
    _refused(lambda: TOP.check_up(_up(torch.zeros(8, 6, 12, 12), torch.full((8,), 10)), stage), ia, "0..9")
    _refused(
        lambda: TOP.check_up(
            _up(torch.zeros(8, 6, 12, 12), torch.zeros(8, dtype=torch.int64), extra={"x": torch.zeros(8)}), stage
        ),
        ia,
        "unexpected ['x']",
    )
    no_labels = Stage(up=CUT, down=CUT)
    _refused(
        lambda: TOP.check_up(_up(torch.zeros(2, 6, 12, 12), torch.zeros(2, dtype=torch.int64)), no_labels),
        grpc.StatusCode.PERMISSION_DENIED,
        "must not leave the client",
    )
    with_ids = Stage(up=CUT, sample_ids=True)
    _refused(lambda: TOP.check_up(_up(torch.zeros(2, 6, 12, 12)), with_ids), ia, "no sample_ids")


def test_the_client_side_check_holds_replies_to_the_batch_that_was_sent():
    stage = TOP.train[0]
    TOP.check_down(CutReply(REF, torch.zeros(8, 6, 12, 12), 0.5, 3, 8), stage, batch=8)
    ia = grpc.StatusCode.INVALID_ARGUMENT
    _refused(lambda: TOP.check_down(CutReply(REF, torch.zeros(7, 6, 12, 12)), stage, batch=8), ia, "expected 8")
    _refused(lambda: TOP.check_down(CutReply(REF, torch.zeros(8, 6)), stage, batch=8), ia, "shape")
    _refused(lambda: TOP.check_down(CutReply(REF, None), stage, batch=8), ia, "no tensor")
    _refused(
        lambda: TOP.check_down(CutReply(REF, torch.zeros(8, 6, 12, 12), correct=9, count=8), stage, batch=8),
        ia,
        "correct",
    )
    optional = Stage(up=CUT, down=CUT, labels=True, down_optional=True)
    TOP.check_down(CutReply(REF, None, 0.1, 1, 8), optional, batch=8)
    _refused(
        lambda: TOP.check_down(CutReply(REF, None), TOP.eval[0], batch=8),
        grpc.StatusCode.FAILED_PRECONDITION,
        "no reply",
    )


def _config(name: str):
    raw = {"paradigm": name, "clients": 4}
    if name == "vertical":
        raw.update(dataset="adult", model="mlp_adult", partition_method="vertical", clients=3)
    if name == "multitask":
        raw.update(client_split=[2, 4], task_datasets=["mnist", "fashionmnist"])
    return config_from_mapping(raw)[0]


@pytest.mark.parametrize("name", [spec.name for spec in registry.all_specs()])
def test_every_paradigm_declares_an_exchange_for_every_client(name):
    spec = registry.get(name)
    config = _config(name)
    for index in range(config.clients):
        exchange = spec.exchange(config, index)
        assert exchange.max_batch == config.batch_size and exchange.max_eval_batch == config.eval_batch_size
        for stage in exchange.train + exchange.eval:
            assert all(d > 0 for d in stage.up.sample_shape)
        names = [s.name for s in exchange.train]
        assert len(set(names)) == len(names)  # stages of a step are told apart by name


def test_labels_travel_only_where_the_server_owns_the_loss():
    assert all(not s.labels for s in registry.get("ushaped").exchange(_config("ushaped"), 0).train)
    assert registry.get("vanilla").exchange(_config("vanilla"), 0).train[0].labels
    vertical = _config("vertical")
    owner = vertical.options["label_owner"]
    labelled = [registry.get("vertical").exchange(vertical, i).train[0].labels for i in range(vertical.clients)]
    assert labelled == [i == owner for i in range(vertical.clients)]
