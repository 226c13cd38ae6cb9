"""Multi-task SL, observed on the wire: task groups take turns, members are served in lock-step, no label
ever leaves a client (one that tries is refused), heads and tails are FedAvg'd within each group only, and
each client trains on its own task's shard."""

from __future__ import annotations

import asyncio

import pytest
import torch
from sl_wire_harness import config_from, reload_server, run_in_process, same_model

from slperf.common.config import ConfigError
from slperf.common.paradigms.kit.serving import RoundRobinGate
from slperf.common.paradigms.multitask import task_layout
from slperf.common.protocol.types import Phase
from slperf.common.wire.codec import decode_tensor, encode_tensor

BASE = {
    "paradigm": "TaskAgnostic",
    "dataset": "mnist",
    "clients": 4,
    "client_split": [2, 4],
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 256,
    "max_test_samples": 64,
    "eval_batch_size": 32,
    "seed": 4,
    "client_timeout": 30.0,
}


def make_config(**overrides):
    return config_from(BASE, **overrides)


run = run_in_process


def uploads(fed, cid, segment, round=0):
    for m in fed.up(cid, "model_state"):
        if m.model_state.segment == segment and m.model_state.round == round:
            return {t.name: decode_tensor(t.tensor) for t in m.model_state.tensors}
    raise AssertionError(f"{cid} uploaded no {segment}")


def test_groups_take_turns_lock_step_no_labels_and_fedavg_within_groups(tmp_path):
    config = make_config()
    assert config.paradigm == "multitask"
    fed = run(config)
    result, evaluation = fed.results[0]
    assert result.participants == ["c1", "c2", "c3", "c4"] and result.dropped == []
    # Each task's 256-sample pool is split between its 2 clients: 4 steps of 4 messages each, never a label.
    for cid in fed.ids:
        acts = fed.cut_tensors(cid, phase=Phase.TRAIN)
        assert [a.ref.stage for a in acts] == ["head", "tail"] * 4
        assert len(fed.cut_replies(cid, phase=Phase.TRAIN)) == 8
        assert all(not a.HasField("labels") for a in fed.cut_tensors(cid))
    # Group 0 (c1, c2) finishes all its training traffic before group 1 (c3, c4) starts.
    train_traffic = [
        cid
        for direction, cid, m in fed.log
        if m.WhichOneof("body") == "cut_tensor" and m.cut_tensor.ref.phase == Phase.TRAIN
    ]
    first_g1 = min(i for i, cid in enumerate(train_traffic) if cid in ("c3", "c4"))
    assert set(train_traffic[:first_g1]) == {"c1", "c2"} and set(train_traffic[first_g1:]) == {"c3", "c4"}
    # Lock-step: the server answers head activations member by member, in member order.
    served = [
        cid
        for direction, cid, m in fed.log
        if direction == "down"
        and m.WhichOneof("body") == "cut_reply"
        and m.cut_reply.ref.phase == Phase.TRAIN
        and m.cut_reply.ref.stage == "head"
    ]
    assert served == ["c1", "c2"] * 4 + ["c3", "c4"] * 4
    # FedAvg within each group: the group's head and tail are the sample-weighted mean of its members'
    # uploads (equal shards -> the plain mean), and the two groups' ends differ.
    state = fed.server.model_state()
    for group, (a, b) in enumerate([("c1", "c2"), ("c3", "c4")]):
        for segment in ("head", "tail"):
            ua, ub = uploads(fed, a, segment), uploads(fed, b, segment)
            for name, value in state[f"{segment}.{group}"].items():
                torch.testing.assert_close(value, (ua[name] + ub[name]) / 2)
    assert any(not torch.equal(state["tail.0"][k], state["tail.1"][k]) for k in state["tail.0"])
    # The shared body was stepped once per member step of both groups.
    assert sum(1 for name, _ in fed.ctx.calls if name == "middle_backward") == 16
    # Evaluation: one member per task, on its task's test set; pooled accuracy, per-task figures in extra.
    evaluators = {cid for cid in fed.ids if fed.cut_tensors(cid, phase=Phase.EVAL)}
    assert evaluators == {"c1", "c3"}
    assert evaluation.samples == 2 * 64
    assert set(evaluation.extra["task_accuracy"]) == {"0", "1"}
    # Each client's data is its shard of its own task's split: disjoint within a task, different per task.
    shards = {cid: set(fed.client_halves[cid].data.train.indices.tolist()) for cid in fed.ids}
    assert all(len(s) == 128 for s in shards.values())
    assert not shards["c1"] & shards["c2"] and not shards["c3"] & shards["c4"]
    assert shards["c1"] != shards["c3"]  # the two tasks' splits use different seeds
    # A server that resumes from its checkpoint has the same body and the same group heads and tails.
    assert same_model(reload_server(fed, tmp_path / "checkpoint.pt").model_state(), state)


def test_a_member_that_sends_labels_is_refused_and_left_out_of_the_average():
    config = make_config()

    def add_labels(client_id, envelope):
        if client_id == "c3" and envelope.WhichOneof("body") == "cut_tensor":
            n = envelope.cut_tensor.tensor.shape[0]
            envelope.cut_tensor.labels.CopyFrom(encode_tensor(torch.zeros(n, dtype=torch.int64)))

    fed = run(config, tamper=add_labels)
    result, evaluation = fed.results[0]
    assert result.dropped == ["c3"] and result.participants == ["c1", "c2", "c4"]
    assert [e.error.code for e in fed.down("c3", "error")][:1] == [7]  # PERMISSION_DENIED
    state = fed.server.model_state()
    for segment in ("head", "tail"):
        c4 = uploads(fed, "c4", segment)
        assert all(torch.equal(state[f"{segment}.1"][k], c4[k]) for k in c4)
    assert evaluation.samples == 2 * 64  # task 1 evaluated through c4


def test_round_robin_gate_skips_members_that_leave():
    async def main():
        gate = RoundRobinGate(["a", "b", "c"])
        order = []

        async def member(name, steps):
            for _ in range(steps):
                await gate.acquire(name)
                order.append(name)
                await asyncio.sleep(0)
                gate.release(name)
            gate.leave(name)

        await asyncio.wait_for(asyncio.gather(member("a", 3), member("b", 1), member("c", 2)), 5)
        return order

    assert asyncio.run(main()) == ["a", "b", "c", "a", "c", "a"]


def test_task_layout_and_options_are_validated():
    tasks = task_layout(make_config())
    assert [(t.index, t.dataset, list(t.members)) for t in tasks] == [(0, "mnist", [0, 1]), (1, "mnist", [2, 3])]
    assert [list(t.members) for t in task_layout(make_config(client_split=[]))] == [[0, 1, 2, 3]]
    with pytest.raises(ConfigError, match="client_split"):
        make_config(client_split=[2, 2])
    with pytest.raises(ConfigError, match="task_datasets"):
        make_config(task_datasets=["mnist"])
    with pytest.raises(ConfigError, match="must end at the number of clients"):
        task_layout(make_config(client_split=[1, 3]))
    from slperf.common.paradigms.multitask import task_spec

    with pytest.raises(ConfigError, match="unknown data set"):
        task_spec("nosuchdata", (1, 28, 28))
    assert task_spec("mnist", (1, 28, 28)).num_classes == 10
