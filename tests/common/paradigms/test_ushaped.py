"""U-shaped SL, observed on the wire: 4 messages per training step, 2 per eval step, never a label; a client
that tries to send labels is refused and dropped while the others go on; the parallel schedule serialises
the server's steps; with one client the split run equals single-process training."""

from __future__ import annotations

import asyncio

import pytest
import torch
from sl_wire_harness import InProcessFederation, config_from, reload_server, run_in_process, same_model
from unsplit_reference import unsplit_training

from slperf.common.config import ConfigError
from slperf.common.protocol.types import Phase
from slperf.common.shards import build_client_data
from slperf.common.wire.codec import decode_tensor, encode_tensor

BASE = {
    "paradigm": "ushaped",
    "dataset": "mnist",
    "clients": 2,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 128,
    "max_test_samples": 64,
    "eval_batch_size": 32,
    "seed": 5,
    "client_timeout": 30.0,
}


def make_config(**overrides):
    return config_from(BASE, **overrides)


run = run_in_process


def shape(tensor_pb) -> tuple[int, ...]:
    return tuple(tensor_pb.shape)


def test_four_messages_per_step_and_no_label_ever_leaves_a_client():
    config = make_config()
    fed = run(config)
    result, evaluation = fed.results[0]
    assert result.participants == ["c1", "c2"] and result.dropped == []
    for cid in fed.ids:
        train_up = fed.cut_tensors(cid, phase=Phase.TRAIN)
        train_down = fed.cut_replies(cid, phase=Phase.TRAIN)
        steps = result.per_client[cid].steps
        assert steps == 2  # 64 samples per client, batch 32
        # Per step: head acts up, middle output down, tail gradient up, head gradient down.
        assert [a.ref.stage for a in train_up] == ["head", "tail"] * steps
        assert len(train_down) == 2 * steps
        for step in range(steps):
            head, tail = train_up[2 * step], train_up[2 * step + 1]
            middle_out, head_grad = train_down[2 * step], train_down[2 * step + 1]
            assert head.ref.step == tail.ref.step == middle_out.ref.step == head_grad.ref.step == step
            assert shape(head.tensor) == (32, 6, 12, 12)
            assert shape(middle_out.tensor) == (32, 256)
            assert shape(tail.tensor) == (32, 256)
            assert shape(head_grad.tensor) == (32, 6, 12, 12)
        # Evaluation: head acts up, middle output down; the client scores it.
        eval_up = fed.cut_tensors(cid, phase=Phase.EVAL)
        eval_down = fed.cut_replies(cid, phase=Phase.EVAL)
        assert len(eval_up) == len(eval_down)
        # Labels: not a single label tensor crossed the wire, in training or evaluation.
        assert all(not a.HasField("labels") for a in fed.cut_tensors(cid))
        # The PhaseDone summary carries the client's own loss and accuracy.
        done = fed.up(cid, "phase_done")
        assert done and done[0].phase_done.num_samples == 64 and done[0].phase_done.loss_sum > 0
    # Sequential: only the last client to train evaluates, through the server, on the whole test subset.
    assert fed.cut_tensors("c1", phase=Phase.EVAL) == []
    assert evaluation.samples == 64 and 0.0 <= evaluation.accuracy <= 1.0
    # Head and tail are handed on through the server: c2 receives what c1 sent back.
    c1_sent = {m.model_state.segment: m.model_state for m in fed.up("c1", "model_state")}
    c2_got = {}
    for m in fed.down("c2", "model_state"):  # the first head and tail c2 gets: before its turn
        c2_got.setdefault(m.model_state.segment, m.model_state)
    assert set(c1_sent) == {"head", "tail"}
    for segment in ("head", "tail"):
        sent = {t.name: decode_tensor(t.tensor) for t in c1_sent[segment].tensors}
        got = {t.name: decode_tensor(t.tensor) for t in c2_got[segment].tensors}
        assert sent.keys() == got.keys() and all(torch.equal(sent[k], got[k]) for k in sent)


def test_a_client_that_sends_labels_is_refused_and_the_others_go_on():
    config = make_config(epochs=1)

    def add_labels(client_id, envelope):
        if client_id == "c1" and envelope.WhichOneof("body") == "cut_tensor":
            n = envelope.cut_tensor.tensor.shape[0]
            envelope.cut_tensor.labels.CopyFrom(encode_tensor(torch.zeros(n, dtype=torch.int64)))

    fed = run(config, tamper=add_labels)
    result, evaluation = fed.results[0]
    assert result.dropped == ["c1"] and result.participants == ["c2"]
    errors = [m.error for m in fed.down("c1", "error")]
    assert errors and errors[0].code == 7  # PERMISSION_DENIED
    assert "labels must not leave the client" in errors[0].message
    # c1's one offending message was never answered with a middle output.
    assert fed.cut_replies("c1") == []
    assert evaluation.samples == 64  # evaluated through c2


def test_dropout_mid_round_does_not_stop_the_ring():
    config = make_config(clients=3, max_train_samples=192)
    seen = {"c2": 0}

    def after_up(client_id, envelope):
        if client_id == "c2" and envelope.WhichOneof("body") == "cut_tensor":
            seen["c2"] += 1
            if seen["c2"] == 2:  # after the tail gradient of its first step
                fed_box[0].cut("c2")

    fed_box = []

    async def main():
        async with InProcessFederation(config, after_up=after_up) as fed:
            fed_box.append(fed)
            await fed.run()
            return fed

    fed = asyncio.run(main())
    result, evaluation = fed.results[0]
    assert result.dropped == ["c2"] and result.participants == ["c1", "c3"]
    assert evaluation.samples == 64


def test_parallel_schedule_serialises_server_steps_and_keeps_ends_per_client(tmp_path):
    config = make_config(paradigm="parallel_U_Shape", epochs=2)
    assert config.paradigm == "ushaped" and config.options["schedule"] == "parallel"
    fed = run(config)
    for result, evaluation in fed.results:
        assert result.participants == ["c1", "c2"]
        assert evaluation.samples == 2 * 64  # every client evaluated its own head and tail
    # Both clients' activations interleave on the server, but each step's forward is followed by its own
    # backward before any other step is served (the graph of the middle is held between the two).
    train_calls = [name for name, _ in fed.ctx.calls if name in ("middle_forward", "middle_backward")]
    assert train_calls == ["middle_forward", "middle_backward"] * (len(train_calls) // 2)
    assert all(not a.HasField("labels") for cid in fed.ids for a in fed.cut_tensors(cid))
    state = fed.server.model_state()
    assert {"head.0", "head.1", "tail.0", "tail.1", "middle"} <= set(state)
    assert any(not torch.equal(state["tail.0"][k], state["tail.1"][k]) for k in state["tail.0"])
    # No averaging: what the server keeps for c1 is exactly what c1 sent back.
    last = [m.model_state for m in fed.up("c1", "model_state") if m.model_state.segment == "tail"][-1]
    for t in last.tensors:
        assert torch.equal(decode_tensor(t.tensor), state["tail.0"][t.name])
    # A server that resumes from its checkpoint has the same middle and every client's head and tail.
    assert same_model(reload_server(fed, tmp_path / "checkpoint.pt").model_state(), state)


def test_one_client_equals_single_process_training():
    config = make_config(clients=1, epochs=2)
    fed = run(config)
    state = fed.server.model_state()
    offsets = {"head": 0, "middle": config.split_layer, "tail": 3}
    joined = {}
    for segment, offset in offsets.items():
        for name, tensor in state[segment].items():
            block, rest = name.split(".", 1)
            joined[f"{int(block) + offset}.{rest}"] = tensor
    expected = unsplit_training(config, build_client_data(config, 0))
    assert set(joined) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(joined[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_options_are_validated():
    assert make_config(tail_layer=3).options["tail_layer"] == 3
    with pytest.raises(ConfigError, match="schedule"):
        make_config(schedule="random")
    with pytest.raises(ConfigError, match="tail_layer"):
        make_config(tail_layer=1)
    with pytest.raises(ConfigError, match="ushaped_parallel"):
        make_config(paradigm="ushaped_parallel", schedule="sequential")
    from slperf.common.paradigms.kit.ushaped import ushaped_cuts

    with pytest.raises(ConfigError, match="tail_layer"):
        ushaped_cuts(make_config(tail_layer=4), (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="split_layer"):
        ushaped_cuts(make_config(split_layer=3), (1, 28, 28), 10)
    # LeNet's block 2 is the flatten: a middle of it alone would have nothing for the server's optimiser to train
    with pytest.raises(ConfigError, match=r"leave the middle \(blocks 2..2 of model 'lenet'\) without trainable"):
        ushaped_cuts(make_config(split_layer=2), (1, 28, 28), 10)
    assert ushaped_cuts(make_config(split_layer=1, tail_layer=2), (1, 28, 28), 10) == [1, 2]
