"""Vertical SL observed on the wire: each client sends only its own slice's embedding with the batch's
sample ids, only the label owner sends labels, the gradient comes back split by embedding width, and
misaligned parties are caught."""

from __future__ import annotations

import pytest
from sl_wire_harness import config_from, run_in_process

from slperf.common.config import ConfigError
from slperf.common.protocol.types import Phase
from slperf.common.wire.codec import decode_tensor, encode_tensor

BASE = {
    "paradigm": "vertical",
    "dataset": "adult",
    "clients": 3,
    "epochs": 1,
    "batch_size": 64,
    "lr": 0.05,
    "max_train_samples": 640,
    "max_test_samples": 256,
    "eval_batch_size": 128,
    "seed": 1,
    "data_vertical_list": [6, 4, 4],
    "cut_layer_vertical_list": [4, 3, 2],
    "label_owner": 1,
    "client_timeout": 30.0,
}


def make_config(**overrides):
    return config_from(BASE, **overrides)


run = run_in_process


def test_each_client_sends_only_its_embedding_and_only_the_owner_sends_labels():
    fed = run(make_config())
    widths = [4, 3, 2]
    id_lists = []
    for index, cid in enumerate(fed.ids):
        train = fed.cut_tensors(cid, phase=Phase.TRAIN)
        assert len(train) == 640 // 64
        for acts in train:
            assert list(acts.tensor.shape)[1:] == [widths[index]]
            assert acts.HasField("labels") == (index == 1)
            assert acts.HasField("sample_ids")
        id_lists.append([tuple(decode_tensor(a.sample_ids).tolist()) for a in train])
        grads = fed.cut_replies(cid, phase=Phase.TRAIN)
        assert len(grads) == len(train)
        assert all(list(g.tensor.shape)[1:] == [widths[index]] for g in grads)
        assert fed.cut_tensors(cid, phase=Phase.EVAL), "every party takes part in evaluation"
    assert id_lists[0] == id_lists[1] == id_lists[2], "all parties visit the same rows in the same order"
    result, evaluation = fed.results[0]
    assert result.participants == fed.ids and not result.dropped
    assert evaluation.samples == 256 and evaluation.accuracy > 0.6


def test_misaligned_sample_ids_are_caught():
    def tamper(client_id, message):
        if client_id == "c3" and message.WhichOneof("body") == "cut_tensor":
            ids = decode_tensor(message.cut_tensor.sample_ids)
            message.cut_tensor.sample_ids.CopyFrom(encode_tensor(ids + 1))

    fed = run(make_config(), tamper=tamper)
    result, _ = fed.results[0]
    assert "c3" in result.dropped
    assert "c1" in result.participants and "c2" in result.participants


@pytest.mark.parametrize(
    "overrides", [{"cut_layer_vertical_list": [4, 3]}, {"data_vertical_list": [0, 7, 7]}, {"label_owner": -1}]
)
def test_bad_vertical_options(overrides):
    with pytest.raises(ConfigError):
        config = make_config(**overrides)
        from slperf.common.paradigms.vertical import VerticalServer

        VerticalServer(config, None, 2, (108,))
